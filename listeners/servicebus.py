"""The Azure Service Bus transport: N session loops on a session-enabled queue (session = device).

Each loop accepts the next session with messages (``NEXT_AVAILABLE_SESSION``, bounded by
``max_wait_time``), drains it in batches of up to ``receive_batch`` peek-locked messages while an
``AutoLockRenewer`` keeps the session lock, and lets it go when it is idle: once a receive comes
back short of a full batch, the next one waits only ``session_idle_wait``. A released session's
receiver is closed in the background (every message of it is settled by then) so that the loop
accepts the next session at once. A batch is recorded and routed in one transaction
(``process_many``) and settled after that commit: completions and dead-letters concurrently (they
take messages out of the queue, so their order does not matter, and the batch's events are already
stored in order), abandons one by one in order (they put messages back, and the broker redelivers
them in the order they return). Settlement follows ``listeners.pipeline``:
complete after the event is recorded and routed, abandon on a transient failure, dead-letter at once
what can never succeed. A settlement error proves nothing (the broker may have applied it): every
effect downstream is idempotent, so the worst case is a redelivery that is recorded as a duplicate.

The SDK puts no deadline on opening a receiver, and a half-open connection can stall a receive:
every broker call here runs under ``asyncio.timeout``, and a watchdog restarts a loop whose
heartbeat stops. ``stop()`` (SIGTERM) lets in-flight messages finish and closes the sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from azure.servicebus import NEXT_AVAILABLE_SESSION
from azure.servicebus.aio import AutoLockRenewer, ServiceBusClient, ServiceBusReceiver
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import (
    MessageLockLostError,
    OperationTimeoutError,
    ServiceBusError,
    SessionCannotBeLockedError,
    SessionLockLostError,
)

from listeners.events import IncomingMessage
from listeners.pipeline import Disposition, MessageProcessor, Outcome
from listeners.settings import ServiceBusSettings

if TYPE_CHECKING:
    from azure.servicebus import ServiceBusReceivedMessage

__all__ = ["ServiceBusListener", "listen", "make_client", "to_incoming"]

log = logging.getLogger(__name__)

#: How long a loop waits before retrying after the broker failed (connection, auth).
RETRY_BACKOFF_SECONDS = 2.0


def make_client(settings: ServiceBusSettings) -> tuple[ServiceBusClient, Any]:
    """A client from a connection string, or a namespace with ``DefaultAzureCredential``.

    Returns the client and the credential to close after it (None for a connection string).
    """
    if settings.connection_string is not None:
        client = ServiceBusClient.from_connection_string(
            settings.connection_string.get_secret_value(), retry_total=2
        )
        return client, None
    if settings.fully_qualified_namespace is None:
        raise ValueError(
            "no Service Bus configured: set ORCH_SB_CONNECTION_STRING or "
            "ORCH_SB_FULLY_QUALIFIED_NAMESPACE (with credentials DefaultAzureCredential can find)"
        )
    from azure.identity.aio import DefaultAzureCredential

    credential = DefaultAzureCredential()
    client = ServiceBusClient(settings.fully_qualified_namespace, credential, retry_total=2)
    return client, credential


def to_incoming(message: ServiceBusReceivedMessage) -> IncomingMessage:
    """Convert at the edge: the core never sees an SDK type."""
    if message.body_type == AmqpMessageBodyType.DATA:
        body = b"".join(message.body)
    else:  # a value or sequence body (not what producers send): its text form
        body = str(message).encode("utf-8", "surrogatepass")  # parse_event refuses it, no raise
    # Binary properties may hold anything: escape what is not UTF-8 rather than fail the batch.
    properties = {
        (k.decode(errors="backslashreplace") if isinstance(k, bytes) else str(k)): (
            v.decode(errors="backslashreplace") if isinstance(v, bytes) else v
        )
        for k, v in (message.application_properties or {}).items()
    }
    return IncomingMessage(
        body=body,
        message_id=str(message.message_id) if message.message_id is not None else None,
        session_id=message.session_id,
        delivery_count=message.delivery_count or 0,
        enqueued_at=message.enqueued_time_utc,
        properties=properties,
    )


class ServiceBusListener:
    """Receive device events from a session-enabled queue and settle them as ingress decides."""

    def __init__(
        self,
        settings: ServiceBusSettings,
        ingress: MessageProcessor,
        *,
        client_factory: Callable[[ServiceBusSettings], tuple[ServiceBusClient, Any]] = make_client,
        lock_renewal_seconds: float = 300.0,
    ) -> None:
        self._settings = settings
        self._ingress = ingress
        self._client_factory = client_factory
        self._lock_renewal = lock_renewal_seconds
        self._stop = asyncio.Event()
        self._beats: dict[int, float] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: Sessions whose lock renewal failed, by the session OBJECT's identity: a late callback
        #: for a device's closed session must not mark that device's next session lost.
        self._lost_sessions: set[int] = set()
        self._closing: set[asyncio.Task[None]] = set()
        #: Counts of what happened: complete, abandon, dead_letter, settle_failed, lock_lost, ...
        self.stats: Counter[str] = Counter()

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop (the SIGTERM handler calls this)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        """Run the session loops until ``stop()``; then drain them within the shutdown grace."""
        client, credential = self._client_factory(self._settings)
        renewer = AutoLockRenewer(
            max_lock_renewal_duration=self._lock_renewal, on_lock_renew_failure=self._renew_failed
        )
        try:
            async with client:
                for index in range(self._settings.max_concurrent_sessions):
                    self._spawn(client, renewer, index)
                watchdog = asyncio.create_task(self._watchdog(client, renewer), name="sb-watchdog")
                await self._stop.wait()
                log.info("stopping: finishing in-flight messages, closing sessions")
                watchdog.cancel()
                loops = list(self._tasks.values())
                _done, pending = await asyncio.wait(loops, timeout=self._settings.shutdown_grace)
                for task in pending:
                    log.warning("a session loop did not finish within the grace; cancelling it")
                    task.cancel()
                await asyncio.gather(*loops, watchdog, return_exceptions=True)
                await asyncio.gather(*self._closing, return_exceptions=True)
        finally:
            await renewer.close()
            if credential is not None:
                await credential.close()
        log.info("listener stopped: %s", dict(self.stats))

    def _spawn(self, client: ServiceBusClient, renewer: AutoLockRenewer, index: int) -> None:
        self._beats[index] = time.monotonic()
        self._tasks[index] = asyncio.create_task(
            self._session_loop(client, renewer, index), name=f"sb-session-{index}"
        )

    # -- supervision -------------------------------------------------------------------------

    def _beat(self, index: int) -> None:
        self._beats[index] = time.monotonic()

    @property
    def stall_limit(self) -> float:
        """A loop silent for longer than this is stuck on the broker: every step it takes is
        bounded by ``max_wait_time`` or ``operation_timeout``, so this only passes when a call
        ignored its deadline."""
        return self._settings.max_wait_time + 3 * self._settings.operation_timeout

    async def _watchdog(self, client: ServiceBusClient, renewer: AutoLockRenewer) -> None:
        interval = max(0.5, min(5.0, self.stall_limit / 4))
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=interval)
            now = time.monotonic()
            for index, task in list(self._tasks.items()):
                if self._stop.is_set():
                    return
                silent = now - self._beats[index]
                if task.done() or silent > self.stall_limit:
                    why = "ended" if task.done() else f"silent for {silent:.0f}s"
                    log.error("session loop %d %s: restarting it", index, why)
                    self.stats["loop_restarted"] += 1
                    task.cancel()
                    self._spawn(client, renewer, index)

    async def _renew_failed(self, renewable: Any, error: Exception | None) -> None:
        session_id = getattr(renewable, "session_id", None)
        if session_id is not None:
            self._lost_sessions.add(id(renewable))
        self.stats["lock_renew_failed"] += 1
        log.warning("lock renewal failed for %s: %r", session_id or renewable, error)

    # -- receiving ---------------------------------------------------------------------------

    async def _session_loop(
        self, client: ServiceBusClient, renewer: AutoLockRenewer, index: int
    ) -> None:
        settings = self._settings
        while not self._stop.is_set():
            self._beat(index)
            receiver = client.get_queue_receiver(
                settings.queue_name,
                session_id=NEXT_AVAILABLE_SESSION,
                max_wait_time=settings.max_wait_time,
                # Without a prefetch the SDK releases (abandons: delivery count + 1) messages the
                # broker pushed on leftover credit between two batch receives. A session's lock
                # covers its buffered messages, and the renewer keeps it.
                prefetch_count=settings.receive_batch,
            )
            try:
                async with asyncio.timeout(settings.max_wait_time + settings.operation_timeout):
                    await receiver.__aenter__()
                session = receiver.session
                # With no session available the link can attach without one (no id, no lock):
                # that is "nothing to do", like OperationTimeoutError.
                if not isinstance(session.session_id, str) or session.locked_until_utc is None:
                    raise OperationTimeoutError(message="no session available")
                renewer.register(receiver, session, max_lock_renewal_duration=self._lock_renewal)
            except (OperationTimeoutError, SessionCannotBeLockedError):
                await self._close(receiver)
                continue  # no session with messages (or it was taken): ask again
            except TimeoutError:
                self.stats["open_stalled"] += 1
                log.error("opening a session receiver stalled past its deadline")
                await self._close(receiver)
                await self._pause()
                continue
            except ServiceBusError as exc:
                self.stats["open_failed"] += 1
                log.warning("cannot open a session receiver: %r", exc)
                await self._close(receiver)
                await self._pause()
                continue
            try:
                await self._drain(receiver, index)
            finally:
                self._close_later(receiver)

    async def _drain(self, receiver: ServiceBusReceiver, index: int) -> None:
        settings = self._settings
        session_id = str(receiver.session.session_id)
        self._lost_sessions.discard(id(receiver.session))
        log.debug("accepted session %s", session_id)
        idle_wait = min(settings.session_idle_wait, settings.max_wait_time)
        wait = settings.max_wait_time
        while not self._stop.is_set():
            self._beat(index)
            try:
                async with asyncio.timeout(wait + settings.operation_timeout):
                    messages = await receiver.receive_messages(
                        max_message_count=settings.receive_batch, max_wait_time=wait
                    )
            except SessionLockLostError:
                self._lock_lost(session_id, None)
                return
            except (TimeoutError, ServiceBusError) as exc:
                self.stats["receive_failed"] += 1
                log.warning("receiving from session %s failed: %r", session_id, exc)
                return
            if not messages:
                return  # idle: let the session go so that another device gets this loop
            if not await self._handle(receiver, messages, session_id):
                return
            # A short batch: the device had nothing more buffered. Look once more, briefly.
            wait = idle_wait if len(messages) < settings.receive_batch else settings.max_wait_time

    async def _handle(
        self,
        receiver: ServiceBusReceiver,
        messages: list[ServiceBusReceivedMessage],
        session_id: str,
    ) -> bool:
        """Process a batch, then settle it; False when the session must be let go."""
        outcomes = await self._ingress.process_many([to_incoming(m) for m in messages])
        if id(receiver.session) in self._lost_sessions:
            self._lock_lost(session_id, messages[0].message_id)
            return False
        pairs = list(zip(messages, outcomes, strict=True))
        # Completions and dead-letters take messages out of the queue: their order is free.
        leaving = [p for p in pairs if p[1].disposition is not Disposition.ABANDON]
        results = await asyncio.gather(
            *(self._settle(receiver, message, outcome) for message, outcome in leaving),
            return_exceptions=True,
        )
        keep = True
        for (message, outcome), result in zip(leaving, results, strict=True):
            keep = self._settled(session_id, message, outcome, result) and keep
        if not keep:
            return False
        # Abandons put messages back: one by one, in order, so they come back in order.
        for message, outcome in pairs:
            if outcome.disposition is not Disposition.ABANDON:
                continue
            if id(receiver.session) in self._lost_sessions:
                self._lock_lost(session_id, message.message_id)
                return False
            try:
                await self._settle(receiver, message, outcome)
            except Exception as exc:  # judged by _settled, as for the concurrent ones
                self._settled(session_id, message, outcome, exc)
                return False
            self._settled(session_id, message, outcome, None)
        return True

    async def _settle(
        self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage, outcome: Outcome
    ) -> None:
        async with asyncio.timeout(self._settings.operation_timeout):
            if outcome.disposition is Disposition.COMPLETE:
                await receiver.complete_message(message)
            elif outcome.disposition is Disposition.DEAD_LETTER:
                await receiver.dead_letter_message(
                    message,
                    reason=outcome.reason,
                    error_description=outcome.description[:4000],
                )
            else:
                await receiver.abandon_message(message)

    def _settled(
        self,
        session_id: str,
        message: ServiceBusReceivedMessage,
        outcome: Outcome,
        result: BaseException | None,
    ) -> bool:
        """Count one settlement; False when the session must be let go."""
        if result is None:
            self.stats[outcome.disposition.value] += 1
            return True
        if isinstance(result, (SessionLockLostError, MessageLockLostError)):
            self._lock_lost(session_id, message.message_id)
            return False
        if isinstance(result, (TimeoutError, ServiceBusError)):
            # It may have been applied anyway; a redelivery is recorded as a duplicate.
            self.stats["settle_failed"] += 1
            log.warning(
                "device=%s message=%s settling (%s) failed: %r",
                session_id,
                message.message_id,
                outcome.disposition.value,
                result,
            )
            return False
        raise result

    def _lock_lost(self, session_id: str, message_id: str | None) -> None:
        self.stats["lock_lost"] += 1
        log.warning(
            "device=%s message=%s session lock lost: in-flight work dropped, the broker redelivers",
            session_id,
            message_id or "-",
        )

    def _close_later(self, receiver: ServiceBusReceiver) -> None:
        """Close a drained receiver without holding up its loop (``run`` awaits it at the end)."""
        task = asyncio.create_task(self._close(receiver), name="sb-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, receiver: ServiceBusReceiver) -> None:
        try:
            async with asyncio.timeout(self._settings.operation_timeout):
                await receiver.close()
        except (TimeoutError, ServiceBusError) as exc:
            log.debug("closing a receiver failed: %r", exc)

    async def _pause(self) -> None:
        """Back off after a broker failure, but wake at once on stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=RETRY_BACKOFF_SECONDS)


async def listen(
    settings: ServiceBusSettings,
    ingress: MessageProcessor,
    *,
    reconcile: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None = None,
    ready: Callable[[ServiceBusListener], None] | None = None,
) -> Counter[str]:
    """Run the listener (and the reconciler beside it) until SIGTERM or SIGINT; drain; return
    the listener's counts. This is ``orchestration listen``."""
    listener = ServiceBusListener(settings, ingress)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, listener.stop)
    log.info(
        "listening on queue %s with %d session loops",
        settings.queue_name,
        settings.max_concurrent_sessions,
    )
    if ready is not None:
        ready(listener)
    reconciler = asyncio.create_task(reconcile(stop)) if reconcile is not None else None
    try:
        await listener.run()
    finally:
        stop.set()
        if reconciler is not None:
            await reconciler
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return listener.stats
