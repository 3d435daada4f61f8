"""The producer side of a drill: device events sent through the real azure-servicebus SDK, each
kept in ``sent`` (what the drill later looks for in the database)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from drills.env import Stage

__all__ = ["Sender", "Sent", "body"]


def body(device: str, name: str, event_id: str | None, **payload: Any) -> str:
    document: dict[str, Any] = {"deviceId": device, "name": name, "payload": payload}
    if event_id is not None:
        document["eventId"] = event_id
    return json.dumps(document)


@dataclass(frozen=True, slots=True)
class Sent:
    message_id: str
    session: str
    text: str


@dataclass
class Sender:
    """``async with Sender(stage) as send:`` one SDK sender for the block."""

    stage: Stage
    sent: list[Sent] = field(default_factory=list)

    async def __aenter__(self) -> Sender:
        broker = self.stage.broker
        self._client = ServiceBusClient.from_connection_string(broker.connection_string)
        await self._client.__aenter__()
        self._sender = self._client.get_queue_sender(broker.queue)
        await self._sender.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._sender.__aexit__(None, None, None)
        await self._client.__aexit__(None, None, None)

    async def raw(self, text: str, session: str, message_id: str | None = None) -> Sent:
        """One message as given (poison included)."""
        sent = Sent(message_id or uuid.uuid4().hex, session, text)
        await self._sender.send_messages(
            ServiceBusMessage(text, session_id=session, message_id=sent.message_id)
        )
        self.sent.append(sent)
        return sent

    async def event(
        self,
        device: str,
        name: str,
        event_id: str,
        message_id: str | None = None,
        **payload: Any,
    ) -> Sent:
        """A well-formed device event on the device's own session."""
        return await self.raw(body(device, name, event_id, **payload), device, message_id)
