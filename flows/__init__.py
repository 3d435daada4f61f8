"""Prefect flows: the generic workflow flow, the in-process executor and the timer resumer.

Import the submodules (``flows.workflow``, ``flows.executor``, ``flows.timers``); this package
module stays empty so importing one of them does not import the others.
"""
