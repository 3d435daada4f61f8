"""The interpreter's hard limits: sizes, depths and budgets that bound every untrusted input."""

from __future__ import annotations

from typing import Final

__all__ = [
    "MAX_BRANCH_NESTING",
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_EXPRESSION_LENGTH",
    "MAX_HINT_LENGTH",
    "MAX_MAP_ITEMS",
    "MAX_PARSED_PATHS",
    "MAX_REGEXES",
    "MAX_REGEX_LENGTH",
    "MAX_RUN_STEPS",
    "MAX_SHAPE_PROBLEMS",
    "MAX_STATES",
    "MAX_WAIT_SECONDS",
    "REGEX_TIMEOUT_SECONDS",
]

#: Largest definition document accepted, in bytes (checked before parsing).
MAX_DOCUMENT_BYTES: Final = 1_000_000
#: Deepest nesting of JSON containers, templates and conditions.
MAX_DEPTH: Final = 64
#: Most states in one definition, branches included.
MAX_STATES: Final = 500
#: Longest JSONPath expression, in characters.
MAX_EXPRESSION_LENGTH: Final = 1_000
#: Longest regular expression in a ``matches`` condition, in characters.
MAX_REGEX_LENGTH: Final = 500
#: Wall-clock budget of one regular-expression match, in seconds.
REGEX_TIMEOUT_SECONDS: Final = 0.05
#: Deepest nesting of parallel/map branches inside each other.
MAX_BRANCH_NESTING: Final = 8
#: Most items one map state fans out to (each is a branch run with its own tasks and keys).
MAX_MAP_ITEMS: Final = 10_000
#: Most states one run (or one branch) may enter: bounds the trail, the artifact and replay cost.
MAX_RUN_STEPS: Final = 10_000
#: Longest wait, event timeout or task timeout, in seconds (3,650 days): a run's clock plus this
#: stays a date the engine, the store and Prefect can hold (a ``datetime`` ends at the year 9999).
MAX_WAIT_SECONDS: Final = 315_360_000.0
#: Longest name compared for a "did you mean" hint: a typo of a longer name is not worth
#: ``difflib``'s quadratic cost (250 names of 1,900 characters once took 106 s to validate).
MAX_HINT_LENGTH: Final = 64
#: Most problems of a document's shape (unknown members, wrong types) listed, then how many more.
MAX_SHAPE_PROBLEMS: Final = 1_000
#: Most paths in one definition beyond plain names and indices (``$['a'][*]``, slices, lists):
#: jsonpath-ng's parser takes about half a millisecond for each, plain paths are read directly.
MAX_PARSED_PATHS: Final = 2_000
#: Most different regular expressions in one definition (about a millisecond each to compile).
MAX_REGEXES: Final = 500
