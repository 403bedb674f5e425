"""unmask: a high-throughput inference server for masked diffusion language models.

Offline use::

    from unmask import LLM, DiffusionParams
    llm = LLM()  # the embedded tiny LLaDA-Instruct
    print(llm.generate([{"role": "user", "content": "What is 12 + 30?"}], DiffusionParams(max_tokens=32))[0].text)
"""
from unmask.server.engine.params import DiffusionParams
from unmask.server.llm import LLM
from unmask.server.outputs import RequestOutput

__version__ = "0.1.0"
__all__ = ["LLM", "DiffusionParams", "RequestOutput", "__version__"]
