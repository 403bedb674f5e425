"""Clients for an unmask server: :class:`Client` / :class:`AsyncClient` (typed, SSE streaming, diffusion
fields as keyword arguments, retries on 503) and the ``chat`` terminal program (``python -m
unmask.clients.chat``). Examples for curl and the openai SDK are in ``clients/examples/``."""
from unmask.clients.client import AsyncClient, Client
from unmask.clients.types import Choice, Completion, StreamEvent, UnmaskAPIError, Usage

__all__ = ["AsyncClient", "Client", "Choice", "Completion", "StreamEvent", "UnmaskAPIError", "Usage"]
