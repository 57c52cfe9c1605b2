"""The benchmark's task modules: the same two no-op tasks for each framework.

``bench.add`` stores its result; ``bench.add_nr`` has ``ignore_result=True``. Both call
``bench.marks.mark()``. URLs come from ``BENCH_BROKER_URL`` and ``BENCH_BACKEND_URL``.
"""
