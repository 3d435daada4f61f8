"""Operations: stuck/crashed-run automations, structured logs and metrics.

Submodules are imported by what needs them (``operations.automations`` pulls in Prefect).
Two of them hold no more than the standard library (and httpx), so every layer down to ``store``
may use them: ``operations.chain`` (the walk of an exception chain) and ``operations.prefect_call``
(one Prefect API call under a deadline, an unreachable Prefect as one error).
"""
