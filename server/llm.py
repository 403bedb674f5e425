"""Offline API: ``LLM(model).generate(prompts, params)`` on the same engine the server uses."""
from __future__ import annotations

import itertools

import torch

from unmask.server.config import EngineConfig, SchedulerConfig
from unmask.server.engine.engine import Engine
from unmask.server.engine.params import DiffusionParams
from unmask.server.engine.sequence import Request
from unmask.server.models.attention_meta import AttentionMetadata, packed_positions
from unmask.server.outputs import RequestOutput, find_stop

Prompt = str | list[int] | list[dict]


def _is_single(prompts) -> bool:
    """A str, a list of ints (token ids) or a list of message dicts (one chat) is one prompt."""
    if isinstance(prompts, str):
        return True
    return isinstance(prompts, list) and bool(prompts) and all(isinstance(p, (int, dict)) for p in prompts)


class LLM:
    """Generation without HTTP. ``model``: None (embedded default), a built-in name, or a checkpoint path."""

    def __init__(self, model: str | None = None, device: str = "auto", dtype: str = "auto",
                 max_num_seqs: int = 64, kv_cache_memory: int | None = None, seed: int = 0,
                 revision: str | None = None, download_dir: str | None = None, tokenizer: str | None = None,
                 quantization: str | None = None, quantize_lm_head: bool = False, **sched):
        """``model`` may be a Hugging Face id (``revision``, ``download_dir``); ``quantization``: None, 'fp8',
        'int8', 'int4'."""
        config = EngineConfig(model=model, device=device, dtype=dtype, kv_cache_memory=kv_cache_memory, seed=seed,
                              revision=revision, download_dir=download_dir, tokenizer=tokenizer,
                              quantization=quantization, quantize_lm_head=quantize_lm_head,
                              scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, **sched))
        self.engine = Engine.from_config(config)
        self.tokenizer = self.engine.tokenizer
        self.model_config = self.engine.model_config
        self._ids = itertools.count()

    def encode(self, prompt: Prompt) -> list[int]:
        """str -> raw encoding; list of {role, content} -> chat template; list of ints -> as given."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if prompt and all(isinstance(m, dict) for m in prompt):
            return self.tokenizer.encode_chat(prompt)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
        raise ValueError("a prompt is a string, a list of token ids, or a list of chat messages")

    def generate(self, prompts, params: DiffusionParams | list[DiffusionParams] | None = None) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. ``params``: one for all, or one per prompt."""
        batch = [prompts] if _is_single(prompts) else list(prompts)
        plist = params if isinstance(params, list) else [params or DiffusionParams()] * len(batch)
        if len(plist) != len(batch):
            raise ValueError(f"{len(plist)} params for {len(batch)} prompts")
        reqs = [Request(f"offline-{next(self._ids)}", tuple(self.encode(p)), sp) for p, sp in zip(batch, plist)]
        for r in reqs:
            self.engine.validate(r)
        collected = {r.request_id: [] for r in reqs}
        final = {}
        for r in reqs:
            self.engine.add_request(r)
        while self.engine.has_unfinished():
            for out in self.engine.step():
                collected[out.request_id].extend(out.new_token_ids)
                if out.finished:
                    final[out.request_id] = out
        return [self._result(r, collected[r.request_id], final[r.request_id]) for r in reqs]

    def _result(self, req: Request, ids: list[int], last) -> RequestOutput:
        text = self.tokenizer.decode(ids) if self.tokenizer is not None else ""
        reason = last.finish_reason
        cut = find_stop(text, req.params.stop)
        if cut >= 0:
            text, reason = text[:cut], "stop"
        return RequestOutput(req.request_id, list(req.prompt_token_ids), ids, text, reason, last.nfe,
                             last.num_committed, last.error)

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """One full bidirectional forward -> [L, V] float32 (float64 when the model runs in float64)."""
        model, dev = self.engine.model, self.engine.device
        ids = torch.tensor(token_ids, dtype=torch.int64, device=dev)
        h = model(ids, packed_positions([len(token_ids)], dev), AttentionMetadata.packed([len(token_ids)], dev))
        out = model.compute_logits(h)
        return out.to(torch.promote_types(out.dtype, torch.float32))
