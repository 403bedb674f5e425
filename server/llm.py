"""Offline API: ``LLM(model).generate(prompts, params)`` on the same engine and output processor the server
uses."""
from __future__ import annotations

import itertools

import torch

from unmask.kernels import options
from unmask.server.config import EngineConfig, SchedulerConfig
from unmask.server.engine.client import Request
from unmask.server.engine.engine import Engine
from unmask.server.engine.output_processor import OutputProcessor, RequestOutput
from unmask.server.engine.params import DiffusionParams
from unmask.server.models.attention_meta import AttentionMetadata, packed_positions

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
                 generation_config: str = "auto", override_generation_config: dict | None = None,
                 revision: str | None = None, download_dir: str | None = None, tokenizer: str | None = None,
                 quantization: str | None = None, quantize_lm_head: bool = False, tensor_parallel_size: int = 1,
                 enable_expert_parallel: bool = False, tp_step_timeout: float = 300.0,
                 retain_host_memory: bool = True, **sched):
        """``generation_config``/``override_generation_config``: the generation defaults as in
        ``unmask serve`` (server/engine/generation_config.py); :meth:`default_params` applies them. ``model`` may
        be a Hugging Face id (``revision``, ``download_dir``); ``quantization``: None, 'fp8', 'int8', 'int4'.
        ``tensor_parallel_size`` > 1 splits the model over that many processes of this node (call :meth:`close`,
        or use the LLM as a context manager, to end them). ``retain_host_memory``: on CPU, keep freed activation
        memory in the heap between steps (``EngineConfig.retain_host_memory``)."""
        config = EngineConfig(model=model, device=device, dtype=dtype, kv_cache_memory=kv_cache_memory, seed=seed,
                              revision=revision, download_dir=download_dir, tokenizer=tokenizer,
                              quantization=quantization, quantize_lm_head=quantize_lm_head,
                              tensor_parallel_size=tensor_parallel_size, enable_expert_parallel=enable_expert_parallel,
                              tp_step_timeout=tp_step_timeout, retain_host_memory=retain_host_memory,
                              scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, **sched),
                              generation_config=generation_config,
                              override_generation_config=tuple((override_generation_config or {}).items()))
        self.engine = Engine.from_config(config)
        self.tokenizer = self.engine.tokenizer
        self.model_config = self.engine.model_config
        self._ids = itertools.count()

    def close(self) -> None:
        """End the worker processes of a tensor-parallel LLM (nothing to do on one device)."""
        self.engine.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def default_params(self, **fields) -> DiffusionParams:
        """DiffusionParams from ``fields`` (None = unset) over the checkpoint's generation defaults, by the
        same rule as the server (a field given here wins; a commit rule given here replaces the default's)."""
        return DiffusionParams.from_fields(fields, self.engine.generation_defaults.values)

    def encode(self, prompt: Prompt) -> list[int]:
        """str -> raw encoding; list of {role, content} -> chat template; list of ints -> as given."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if prompt and all(isinstance(m, dict) for m in prompt):
            return self.tokenizer.encode_chat(prompt)
        if all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
        raise ValueError("a prompt is a string, a list of token ids, or a list of chat messages")

    def generate(self, prompts, params: DiffusionParams | list[DiffusionParams] | None = None,
                 suffix: str | list[int] | list | None = None) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. ``params``: one for all, or one per prompt (default: the
        checkpoint's generation defaults, :meth:`default_params`). ``suffix`` (infilling: text or token ids
        after the generated middle, one for all or a list with one per prompt): the canvas is prompt +
        masks + suffix and the answer is the middle. Raises ValueError (RequestRejected) before anything runs
        if a prompt or its settings can never run."""
        batch = [prompts] if _is_single(prompts) else list(prompts)
        plist = params if isinstance(params, list) else [params or self.default_params()] * len(batch)
        if len(plist) != len(batch):
            raise ValueError(f"{len(plist)} params for {len(batch)} prompts")
        suffixes = self._suffixes(suffix, len(batch))
        reqs = [Request(f"offline-{next(self._ids)}", tuple(self.encode(p)), sp, suffix_token_ids=sfx)
                for p, sp, sfx in zip(batch, plist, suffixes)]
        self.engine.add_requests(reqs)
        procs = {r.request_id: OutputProcessor(self.tokenizer, r.params, r.request_id, r.prompt_token_ids)
                 for r in reqs}
        while self.engine.has_unfinished():
            for out in self.engine.step():
                proc = procs[out.request_id]
                if proc.process(out).finished and not out.finished:
                    self.engine.abort(out.request_id)  # budget or stop string reached: free the slot
        return [procs[r.request_id].result() for r in reqs]

    def _suffixes(self, suffix, n: int) -> list[tuple[int, ...]]:
        """``suffix`` of :meth:`generate` -> one tuple of token ids per prompt."""
        if not suffix:
            return [()] * n
        if isinstance(suffix, str) or (suffix and all(isinstance(t, int) for t in suffix)):
            suffix = [suffix] * n
        if len(suffix) != n:
            raise ValueError(f"{len(suffix)} suffixes for {n} prompts")
        return [tuple(self.tokenizer.encode(s) if isinstance(s, str) else s) for s in suffix]

    @torch.inference_mode()
    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """One full bidirectional forward -> [L, V] float32 (float64 when the model runs in float64)."""
        if self.engine.ranks is not None:  # every rank runs it; the vocabulary slices are gathered
            return self.engine.runner.logits(token_ids)
        model, dev = self.engine.model, self.engine.device
        ids = torch.tensor(token_ids, dtype=torch.int64, device=dev)
        with options.use(self.engine.runner.kernels):  # the engine's kernels, as its steps run them
            h = model(ids, packed_positions([len(token_ids)], dev), AttentionMetadata.packed([len(token_ids)], dev))
            out = model.compute_logits(h)
        return out.to(torch.promote_types(out.dtype, torch.float32))
