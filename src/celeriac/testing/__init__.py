"""Helpers for testing code that uses Celeriac: an in-thread worker (``worker.start_worker``)
and a pytest plugin (``pytest_plugin``: fixtures ``celeriac_app``, ``celeriac_worker``...)."""
