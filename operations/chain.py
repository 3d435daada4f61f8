"""The walk of an exception chain: an exception and everything that caused it.

``exception_chain(exc)`` lists ``exc``, then what caused it: ``__cause__``, else ``__context__``
unless suppressed (``raise ... from None``), and the members of an exception group, each one's own
chain in turn; an exception is listed once, so a cycle ends the walk. The order is depth first,
a group's members in their order, then the group's own cause.

``every_member=False`` follows only a group's first member (a task group's first failure, the
one that counts) and not the group's cause: the list is then one line from ``exc`` to its root
cause, the last link.

Callers: ``store.transient.is_transient`` (is any link a transient failure),
``cli.failures`` and ``operations.logtext`` (which service failed, the root cause). Only the
standard library is used, so any layer may import it.
"""

from __future__ import annotations

__all__ = ["exception_chain"]


def exception_chain(exc: BaseException, *, every_member: bool = True) -> list[BaseException]:
    """``exc`` and everything that caused it, exception groups' members included."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if any(current is known for known in seen):
            continue
        seen.append(current)
        if isinstance(current, BaseExceptionGroup) and current.exceptions:
            if not every_member:
                pending.append(current.exceptions[0])
                continue
            members = list(current.exceptions)
        else:
            members = []
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        elif current.__context__ is not None and not current.__suppress_context__:
            pending.append(current.__context__)
        pending.extend(reversed(members))  # popped first, in their order
    return seen
