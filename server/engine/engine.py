"""Engine: the synchronous core (validate → schedule → run → update), used by ``LLM`` and ``AsyncEngine``."""
from __future__ import annotations

import logging
import random

import torch

from unmask.server.config import EngineConfig, ModelConfig
from unmask.server.engine.batch import StepOutput
from unmask.server.engine.kv_cache import KVCacheManager
from unmask.server.engine.model_runner import ModelRunner
from unmask.server.engine.scheduler import Scheduler
from unmask.server.engine.sequence import Request, Sequence, StepKind
from unmask.server.engine.stats import EngineStats
from unmask.server.models.loader import load_model
from unmask.server.models.resolve import resolve_device, resolve_dtype, resolve_model_path
from unmask.server.tokenizer import Tokenizer

log = logging.getLogger("unmask.engine")
CPU_CACHE_BYTES = 1 << 30


class Engine:
    """Owns the model, its cache and the scheduler. Not thread-safe: one thread calls it."""

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, tokenizer: Tokenizer | None, config: EngineConfig,
                 device: torch.device, dtype: torch.dtype):
        self.model, self.model_config, self.tokenizer = model, cfg, tokenizer
        self.config, self.device, self.dtype = config, device, dtype
        self.kv = KVCacheManager(cfg, self._cache_bytes(), device, dtype)
        self.scheduler = Scheduler(config.scheduler, self.kv)
        self.runner = ModelRunner(model, cfg, device, self.kv, config.cuda_graphs)
        self.max_model_len = config.scheduler.max_model_len or cfg.max_position_embeddings
        self._rng = random.Random(config.seed)
        self._known: set[str] = set()
        self.step_hook = None  # test-only fault injection: called with the Batch before each step
        self.stats = EngineStats()

    @classmethod
    def from_config(cls, config: EngineConfig) -> "Engine":
        path = resolve_model_path(config.model, config.revision, config.download_dir)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        model, cfg = load_model(path, device, dtype, config.quantization, config.quantize_lm_head)
        tok = path if config.tokenizer is None else resolve_model_path(config.tokenizer, None, config.download_dir)
        return cls(model, cfg, Tokenizer.from_pretrained(tok), config, device, dtype)

    def _cache_bytes(self) -> int:
        if self.config.kv_cache_memory is not None:
            return int(self.config.kv_cache_memory)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * 0.4)
        return CPU_CACHE_BYTES

    def validate(self, request: Request) -> None:
        """Raise ValueError (naming the problem) if the request can never run."""
        ids = request.prompt_token_ids
        if not ids:
            raise ValueError("the prompt is empty; give at least one token")
        bad = [t for t in ids if not 0 <= t < self.model_config.vocab_size]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is out of range [0, {self.model_config.vocab_size})")
        if self.model_config.mask_token_id in ids:
            raise ValueError(f"the prompt contains the mask token (id {self.model_config.mask_token_id}); "
                             "infilling is not supported")
        total = len(ids) + request.params.max_tokens
        if total > self.max_model_len:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({request.params.max_tokens}) = {total} "
                             f"exceeds the maximum canvas length {self.max_model_len}")

    def add_request(self, request: Request) -> None:
        """Validate and queue; raises ValueError before anything is admitted."""
        if request.request_id in self._known:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.validate(request)
        seed = request.params.seed if request.params.seed is not None else self._rng.getrandbits(63)
        seq = Sequence(request, self.model_config.mask_token_id, self.model_config.stop_token_ids, seed)
        self.scheduler.add(seq)
        self._known.add(request.request_id)

    def abort(self, request_id: str) -> StepOutput | None:
        out = self.scheduler.abort(request_id)
        self._known.discard(request_id)
        return out

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[StepOutput]:
        """One iteration: one denoising step for every scheduled sequence. A failing step finishes only
        its own requests (finish_reason 'error'); the engine stays usable."""
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        try:
            if self.step_hook is not None:
                self.step_hook(batch)
            result = self.runner.run(batch)
        except Exception as exc:  # noqa: BLE001 - isolate the failure to this step's requests
            log.exception("engine step failed for %d requests", len(batch.seqs))
            self.stats.failed_steps += 1
            outs = self.scheduler.fail(batch, f"{type(exc).__name__}: {exc}")
        else:
            outs = self.scheduler.update(batch, result)
            self._count(batch, result, outs)
        for out in outs:
            if out.finished:
                self._known.discard(out.request_id)
        return outs

    def _count(self, batch, result, outs) -> None:
        st = self.stats
        st.iterations += 1
        st.last_batch_size = len(batch.seqs)
        st.batch_size_sum += len(batch.seqs)
        st.forward_tokens += batch.num_tokens
        for kind, ran, (pos, _) in zip(batch.kinds, result.ran_forward, result.commits):
            st.nfe += int(ran)
            st.committed_tokens += len(pos)
            if ran:
                st.refresh_steps += int(kind is StepKind.REFRESH)
                st.block_steps += int(kind is StepKind.BLOCK)
        st.output_tokens += sum(len(o.new_token_ids) for o in outs)
