"""``notify.send``: a notification to the operators' webhook, or to the log and the records.

With ``ORCH_NOTIFY_WEBHOOK_URL`` set, the notification is POSTed there as JSON (with the step's
idempotency key in an ``Idempotency-Key`` header); otherwise it is logged and stored as a record of
kind ``notification`` (when the context has a record store), so nothing is lost in development.
The webhook URL usually embeds a token: it never appears in results, logs or error messages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from interpreter.errors import ActivityError
from tasks.registry import ActivityInput, ActivityOutput

if TYPE_CHECKING:
    from tasks.context import ActivityContext
    from tasks.registry import ActivityRegistry

__all__ = ["NotifyInput", "NotifyOutput", "register", "send_notification"]

NOTIFICATION_KIND = "notification"


class NotifyInput(ActivityInput):
    channel: str | None = Field(default=None, min_length=1, max_length=200)
    subject: str = Field(min_length=1, max_length=1000)
    message: str = Field(default="", max_length=100_000)
    data: Any = None


class NotifyOutput(ActivityOutput):
    delivered: bool
    channel: str
    via: Literal["webhook", "log"] = Field(description="Where it went: the webhook, or log+record")


async def _post(ctx: ActivityContext, url: str, payload: dict[str, Any]) -> None:
    import httpx

    from tasks.builtin import logredact

    logredact.install()
    headers = {"Idempotency-Key": ctx.idempotency_key} if ctx.idempotency_key else {}
    try:
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(ctx.notify.timeout_seconds), follow_redirects=False
        ) as client:
            response = await client.post(url, json=payload, headers=headers)
    except httpx.HTTPError as exc:
        # The exception text may contain the URL (and its token): report the kind of failure only.
        raise ActivityError(
            "Notify.Unavailable", f"webhook unreachable: {type(exc).__name__}", retryable=True
        ) from None
    status = response.status_code
    if status >= 500:
        raise ActivityError("Notify.Unavailable", f"webhook answered {status}", retryable=True)
    if status >= 300:
        raise ActivityError("Notify.Rejected", f"webhook answered {status}", retryable=False)


async def send_notification(ctx: ActivityContext, request: NotifyInput) -> NotifyOutput:
    """POST to the webhook when configured, else log and record the notification."""
    channel = request.channel or ctx.notify.default_channel
    payload = {
        "channel": channel,
        "subject": request.subject,
        "message": request.message,
        "data": request.data,
        "runId": ctx.run_id,
        "deviceId": ctx.device_id,
        "state": ctx.state,
    }
    webhook = ctx.notify.webhook_url
    if webhook is not None:
        await _post(ctx, webhook.get_secret_value(), payload)
        ctx.logger.info("notify.send channel=%s via webhook: %s", channel, request.subject)
        return NotifyOutput(delivered=True, channel=channel, via="webhook")
    ctx.logger.info(
        "notify.send channel=%s subject=%s message=%s", channel, request.subject, request.message
    )
    if ctx.records is not None:
        await ctx.records.create(NOTIFICATION_KIND, payload, ctx.idempotency_key)
    return NotifyOutput(delivered=True, channel=channel, via="log")


def register(registry: ActivityRegistry) -> None:
    registry.activity(
        name="notify.send",
        description=(
            "Send a notification: POST to ORCH_NOTIFY_WEBHOOK_URL, or log it and store it as a "
            "'notification' record when no webhook is configured."
        ),
        retry_safe=True,
        changes_state=True,
    )(send_notification)
