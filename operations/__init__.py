"""Operations: stuck/crashed-run automations, structured logs and metrics.

Submodules are imported by what needs them (``operations.automations`` pulls in Prefect).
"""
