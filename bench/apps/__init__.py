"""The benchmark's task modules: the same two no-op tasks for each framework.

``bench.add`` stores its result; ``bench.add_nr`` has ``ignore_result=True``; both call
``bench.marks.mark()``. ``bench.stamp`` returns when it ran;
``bench.tsum`` sums a list (a chord body). URLs come from ``BENCH_BROKER_URL``
and ``BENCH_BACKEND_URL``.
"""
