"""What the benchmarks and the tests both measure against: the LLaDA ``generate()`` port (the oracle,
``llada_generate``) and the tiny HF-format checkpoint writers (``checkpoints``).

They live here rather than in ``tests/`` so that benchmarks never import the test suite (tests import
``benchmarks.reference`` instead: ``pythonpath = ["."]`` in pytest's settings), and rather than in the
``unmask`` package because they are development tools, not something a server install needs to ship.
"""
