"""Broker drivers. Each implements the few primitives of ``base.Transport``; delivery semantics
(leases, delayed messages, priorities, dead letters) are specified there and checked by
``tests/contract/test_transport_contract.py`` for every driver.
"""
