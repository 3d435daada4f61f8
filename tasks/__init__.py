"""Activities: the registry, the context every activity receives, and the built-ins.

``default_registry()`` holds the built-in activities (see docs/CONTRACTS.md, "Built-in activity
names"); importing this package stays light, the built-ins load when first asked for.
"""

from tasks.context import ActivityContext
from tasks.registry import (
    Activity,
    ActivityInput,
    ActivityOutput,
    ActivityRegistry,
    DuplicateActivityError,
    UnknownActivityError,
    default_registry,
)
from tasks.settings import DefinitionSettings, HttpSettings, NotifySettings

__all__ = [
    "Activity",
    "ActivityContext",
    "ActivityInput",
    "ActivityOutput",
    "ActivityRegistry",
    "DefinitionSettings",
    "DuplicateActivityError",
    "HttpSettings",
    "NotifySettings",
    "UnknownActivityError",
    "default_registry",
]
