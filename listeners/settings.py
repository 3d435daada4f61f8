"""Configuration of device event ingress, read from the environment by the composition root only.

Two concerns, two models: the Service Bus transport (``ORCH_SB_``) and what ingress starts
(``ORCH_INGRESS_``). Everything below the CLI takes these values as arguments.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["IngressSettings", "ServiceBusSettings"]


class ServiceBusSettings(BaseSettings):
    """Where the device-event queue lives and how hard the listener may pull on it."""

    model_config = SettingsConfigDict(env_prefix="ORCH_SB_", extra="ignore", frozen=True)

    connection_string: SecretStr | None = None
    fully_qualified_namespace: str | None = None
    queue_name: str = "device-events"
    max_concurrent_sessions: int = Field(default=8, ge=1, le=256)
    #: Seconds a session loop waits for a session with messages, and for the next message of an
    #: accepted session before it lets the session go.
    max_wait_time: float = Field(default=5.0, gt=0, le=300)
    #: Messages taken from a session at once, recorded in one transaction, then settled.
    #: All are locked while the batch is handled, so keep the batch's work well under the lock.
    receive_batch: int = Field(default=32, ge=1, le=1000)
    #: Seconds an accepted session waits for more once a receive came back short of a full batch
    #: (the device has sent everything it had); past it the session is let go, and the device's
    #: later messages are accepted again by whichever loop is free. Never longer than
    #: ``max_wait_time``. Longer keeps trickling devices on one loop; shorter frees loops sooner.
    session_idle_wait: float = Field(default=0.5, gt=0, le=300)
    #: Larger bodies are dead-lettered unread (256 KB is the Standard tier's limit).
    max_message_bytes: int = Field(default=256 * 1024, ge=1024)
    #: Deadline for opening a receiver or settling a message; the SDK has none of its own.
    operation_timeout: float = Field(default=60.0, gt=0)
    #: How long SIGTERM waits for in-flight messages before closing anyway.
    shutdown_grace: float = Field(default=30.0, gt=0)
    #: Dead-letter reasons that ``deadletters process --resubmit`` sends back to the queue.
    recoverable_reasons: frozenset[str] = frozenset(
        {"MaxDeliveryCountExceeded", "TransientFailure"}
    )
    #: Where the dead-letter processor posts one alert per message (none: log only). A secret:
    #: webhook URLs carry their token in the path.
    alert_webhook_url: SecretStr | None = None

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> ServiceBusSettings:
        if self.connection_string is not None and self.fully_qualified_namespace is not None:
            raise ValueError(
                "set ORCH_SB_CONNECTION_STRING or ORCH_SB_FULLY_QUALIFIED_NAMESPACE, not both"
            )
        return self

    @property
    def configured(self) -> bool:
        return self.connection_string is not None or self.fully_qualified_namespace is not None


class IngressSettings(BaseSettings):
    """Which workflow a device's event starts, and through which Prefect deployment."""

    model_config = SettingsConfigDict(env_prefix="ORCH_INGRESS_", extra="ignore", frozen=True)

    workflow: str = "device-onboarding"
    workflow_version: str | None = None
    #: ``<flow name>/<deployment name>`` as Prefect spells it.
    deployment: str = "run-workflow/device-workflow"
    #: How long a device's "busy run" answer from Prefect is trusted before it is asked again.
    run_status_ttl: float = Field(default=2.0, ge=0)
    #: Seconds between outbox reconciler passes.
    reconcile_interval: float = Field(default=2.0, gt=0)
    #: Deadline of one call to Prefect; past it the call counts as "Prefect unavailable".
    prefect_timeout: float = Field(default=10.0, gt=0)
