"""Celeriac's benchmark: Celeriac beside Celery 5 (and peers) on one private Redis, in one run.

Run it with ``bench/run`` (installs what it needs, then ``python -m bench``); see ``bench/main.py``
for the options and ``docs/benchmarks.md`` for the latest table. Not part of the test suite.
"""
