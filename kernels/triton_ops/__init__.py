"""Triton fast paths: one module per op family, each exporting (``__all__``) the same function names and
signatures as its ``torch_ref`` twin, which remains the specification (``backend.py`` builds its
dispatch table from those lists). Helper modules start with ``_`` or are not listed in ``backend``.
Every kernel also runs in Triton's CPU interpreter (``TRITON_INTERPRET=1``) for the tests."""
