"""Benchmarks of the flow: interpreter vs a hand-written flow, executor throughput, suspended runs.

``python -m bench [compare|throughput|suspended|all]`` starts its own PostgreSQL-backed Prefect
server (the test support code), an app database on PostgreSQL, and prints numbers and ratios.
"""
