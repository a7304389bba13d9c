"""Benchmark suite of budgetlimiter: ``python -m benchmarks`` (see ``benchmarks/__main__.py``).

Every figure is reported next to references (``redis-benchmark``, raw redis-py, the ``limits``
library) measured on the same redis-server in the same process run, because absolute numbers
on a shared or small machine mean little; the ratios are what the goals are stated in.
"""
