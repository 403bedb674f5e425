"""Bodies of the vLLM-style ``/tokenize`` and ``/detokenize`` routes (pydantic, like protocol.py)."""
from __future__ import annotations

from pydantic import StrictBool, StrictInt, StrictStr

from unmask.server.api.protocol import ChatMessage, OpenAIBase


class TokenizeRequest(OpenAIBase):
    model: StrictStr | None = None
    prompt: StrictStr | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: StrictBool = True
    add_special_tokens: StrictBool = True
    return_token_strs: bool = False


class DetokenizeRequest(OpenAIBase):
    model: StrictStr | None = None
    tokens: list[StrictInt]
