"""Fault drills: the whole system on real processes (PostgreSQL, a Prefect server on it, the fake
Service Bus broker through the real SDK, ``orchestration worker`` and ``orchestration listen``),
one fault injected per drill, then figures checked once the system has settled.

``./dev drills [NAME...]`` (``python -m drills``) prints one row per drill and exits 0 only when
every selected drill passed. Modules: ``env`` (the parts), ``procs`` (a subprocess), ``sink``
(side effects by idempotency key), ``sender`` (the producer), ``observe`` (figures and settling),
``report`` (rows, table), ``catalog`` (the registry); one module per family of drills.
"""
