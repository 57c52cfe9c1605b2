"""Result backends: a few key-value primitives per driver (``base.KeyValueStore``); Celery's
record format, state precedence and group logic are written once in ``base.ResultBackend``.
"""
