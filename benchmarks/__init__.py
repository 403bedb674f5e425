"""Benchmarks, run from the repository root as modules (``python -m benchmarks.offline …``), so they import
``benchmarks.*``, ``recipes`` and the installed ``unmask`` without editing ``sys.path``."""
