"""Output-token logprobs in the OpenAI wire shapes (chat, legacy completions, Responses).

Input per token: ``(token id, (logprob, top ids, top logprobs))`` as the engine reports it
(``Delta.logprobs`` / ``OutputProcessor.logprobs``): the log-probability under the processed distribution of
the denoising step that committed the token, and the step's most likely alternatives. Token strings are the
single-token decodes (special tokens included); ``bytes`` their UTF-8 bytes. A token the sampling
controls filtered out has probability 0: its −inf is sent as −9999.0 (JSON has no infinity; vLLM's value).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

Entry = tuple[int, tuple]  # (token id, (logprob, top ids, top logprobs))
FLOOR = -9999.0


def _finite(v: float) -> float:
    return max(v, FLOOR)


def pairs(token_ids, logprobs) -> list[Entry]:
    """Zip a choice's token ids with their logprob entries (None when the request did not ask)."""
    return [] if logprobs is None else list(zip(token_ids, logprobs))


def _item(strings: Callable[[int], str], token: int, logprob: float) -> dict:
    text = strings(token)
    return {"token": text, "logprob": _finite(logprob), "bytes": list(text.encode("utf-8"))}


def chat_content(entries: Iterable[Entry], strings: Callable[[int], str]) -> list[dict]:
    """Chat's ``logprobs.content`` (also the Responses API's ``logprobs`` of an output_text part)."""
    out = []
    for token, (lp, top_ids, top_lps) in entries:
        item = _item(strings, token, lp)
        item["top_logprobs"] = [_item(strings, t, v) for t, v in zip(top_ids, top_lps)]
        out.append(item)
    return out


def chat(entries: list[Entry], strings: Callable[[int], str]) -> dict:
    return {"content": chat_content(entries, strings), "refusal": None}


def completion(entries: list[Entry], strings: Callable[[int], str], offset: int) -> dict:
    """Legacy completions ``logprobs`` (tokens, token_logprobs, top_logprobs, text_offset); ``offset`` is the
    text position of the first token. ``top_logprobs`` holds the alternatives and the chosen token (vLLM)."""
    tokens, lps, tops, offsets = [], [], [], []
    for token, (lp, top_ids, top_lps) in entries:
        text = strings(token)
        tops.append({**{strings(t): _finite(v) for t, v in zip(top_ids, top_lps)}, text: _finite(lp)})
        tokens.append(text), lps.append(_finite(lp)), offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
