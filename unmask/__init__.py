"""unmask: a high-throughput inference server for masked diffusion language models.

Offline use::

    from unmask import LLM, DiffusionParams
    llm = LLM()  # the embedded tiny LLaDA-Instruct
    print(llm.generate([{"role": "user", "content": "What is 12 + 30?"}], DiffusionParams(max_tokens=32))[0].text)
"""
from pathlib import Path as _Path

# A source checkout keeps the subpackages beside this folder (server/, kernels/, clients/; see the
# package-dir table in pyproject.toml). Make them importable from the checkout without an install.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "server" / "engine").is_dir():
    __path__.append(str(_checkout))  # noqa: F821 - the package's own search path

_EXPORTS = {"DiffusionParams": "unmask.server.engine.params", "LLM": "unmask.server.llm",
            "RequestOutput": "unmask.server.engine.output_processor"}


def __getattr__(name: str):
    """Load the public classes on first use, so ``import unmask.kernels`` needs only torch (and Triton)."""
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'unmask' has no attribute {name!r}")


__version__ = "0.1.0"
__all__ = ["LLM", "DiffusionParams", "RequestOutput", "__version__"]
