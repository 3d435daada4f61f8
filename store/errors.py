"""The store's exceptions, a branch of the project's one root (``interpreter.errors``).

    OrchestrationError
    └── StoreError                      something the store refuses or cannot do
        ├── UnsupportedDatabaseError    neither SQLite (aiosqlite) nor PostgreSQL (asyncpg)
        ├── EventRefusedError           an event the database can never store (permanent)
        ├── IdempotencyConflictError    a key reused for another activity or another input
        ├── IdempotencyPendingError     the first call with this key is still running (retry later)
        ├── RecordNotFoundError         no record with this id
        └── RecordStateError            the record cannot change in its status (rolled back)

``retryable`` says whether trying the same call again later can succeed.
"""

from __future__ import annotations

from interpreter.errors import OrchestrationError

__all__ = [
    "EventRefusedError",
    "IdempotencyConflictError",
    "IdempotencyPendingError",
    "RecordNotFoundError",
    "RecordStateError",
    "StoreError",
    "UnsupportedDatabaseError",
]


class StoreError(OrchestrationError):
    """Root of the store's errors."""

    retryable = False


class UnsupportedDatabaseError(StoreError):
    """The URL names a database or driver the store does not support."""


class EventRefusedError(StoreError):
    """Events holding values the database can never store (NUL characters, lone surrogates,
    NaN or infinite numbers, ...): retrying cannot help, nothing of the batch was written.

    ``refused`` maps the positions of the offending events (in the order given to the store) to
    what is wrong with each; it is empty when the database refused the batch without saying which
    event, and then ``description`` carries the database's own message.
    """

    def __init__(self, description: str, refused: dict[int, str] | None = None) -> None:
        super().__init__(f"the database refuses to store the event: {description}")
        self.description = description
        self.refused = dict(refused or {})


class IdempotencyConflictError(StoreError):
    """An idempotency key was used before for a different activity or a different input."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"idempotency key {key!r}: {message}")
        self.key = key


class IdempotencyPendingError(StoreError):
    """Another caller holds the key and did not finish before the wait deadline."""

    retryable = True

    def __init__(self, key: str, waited_seconds: float) -> None:
        super().__init__(
            f"idempotency key {key!r} is still being executed by another caller "
            f"after waiting {waited_seconds:.1f}s; retry later"
        )
        self.key = key


class RecordNotFoundError(StoreError):
    """No record has this id."""

    def __init__(self, record_id: str) -> None:
        super().__init__(f"record {record_id!r} not found")
        self.record_id = record_id


class RecordStateError(StoreError):
    """The record's status forbids the change (a rolled-back record is final)."""

    def __init__(self, record_id: str, status: str, action: str) -> None:
        super().__init__(f"record {record_id!r} is {status}: cannot {action} it")
        self.record_id = record_id
        self.status = status
