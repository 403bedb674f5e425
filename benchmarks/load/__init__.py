"""Building blocks of the HTTP load generator (``benchmarks/serving.py``) and its sweep (``benchmarks/sweep.py``):
datasets, one streamed request, metric aggregation, the report, a server launcher and the plots."""
