"""The HTTP management API (FastAPI): ``create_app(settings)``; ``orchestration serve-api``."""

from api.app import create_app
from api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
