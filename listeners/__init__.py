"""Device event ingress: transports deliver events, the router records and starts or routes them.

    transport (Service Bus | local)  ->  parse_event  ->  Router.handle  ->  store + RunControl
                                                              \\-> outbox  <- Reconciler

Modules: ``events`` (the message contract), ``router`` (start-or-route), ``control`` (the Prefect
port), ``outbox`` (the reconciler), ``servicebus`` and ``local`` (transports), ``deadletters``,
``settings``. Transports and Prefect are imported lazily by the modules that need them.
"""

from __future__ import annotations

from listeners.control import ControlError, ControlUnavailableError, RunControl
from listeners.events import IncomingEvent, IncomingMessage, PoisonMessageError, parse_event
from listeners.router import RecordStatus, RouteAction, Router, RouteResult

__all__ = [
    "ControlError",
    "ControlUnavailableError",
    "IncomingEvent",
    "IncomingMessage",
    "PoisonMessageError",
    "RecordStatus",
    "RouteAction",
    "RouteResult",
    "Router",
    "RunControl",
    "parse_event",
]
