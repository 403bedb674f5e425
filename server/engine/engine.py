"""Engine: the synchronous core (validate → schedule → run → update), used by ``LLM`` and ``AsyncEngine``."""
from __future__ import annotations

import functools
import logging
import random

import torch

from unmask.server.config import EngineConfig, ModelConfig
from unmask.server.engine.batch import StepOutput
from unmask.server.engine.client import EngineDeadError, ModelInfo, Request, RequestRejected
from unmask.server.engine.family_rules import rules_for
from unmask.server.engine.generation_config import GenerationDefaults, read_generation_config, resolve_defaults
from unmask.server.engine.host_memory import retain_freed_host_memory
from unmask.server.engine.kv_cache import KVCacheManager
from unmask.server.engine.model_runner import ModelRunner
from unmask.server.engine.scheduler import Scheduler
from unmask.server.engine.sequence import Sequence, StepKind
from unmask.server.engine.stats import EngineStats
from unmask.server.engine.structured import GrammarCompiler, GrammarError
from unmask.server.models.loader import load_model
from unmask.server.models.resolve import resolve_device, resolve_dtype, resolve_model_path
from unmask.server.tokenizer import Tokenizer

log = logging.getLogger("unmask.engine")
CPU_CACHE_BYTES = 1 << 30


class Engine:
    """Owns the model, its cache and the scheduler. Not thread-safe: one thread calls it."""

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, tokenizer: Tokenizer | None, config: EngineConfig,
                 device: torch.device, dtype: torch.dtype, generation_defaults: GenerationDefaults | None = None,
                 ranks=None):
        """``ranks``: the worker ranks of a tensor-parallel engine (``workers.RankGroup``; ``model`` is then rank
        0's shard), or None."""
        self.model, self.model_config, self.tokenizer = model, cfg, tokenizer
        self.config, self.device, self.dtype, self.ranks = config, device, dtype, ranks
        self.retains_host_memory = device.type == "cpu" and config.retain_host_memory and retain_freed_host_memory()
        kv_cfg = cfg if ranks is None else ranks.tp.local_config(cfg)  # a rank caches its own heads
        self.kv = KVCacheManager(kv_cfg, self._cache_bytes(), device, dtype)
        self.scheduler = Scheduler(config.scheduler, self.kv)
        self.runner = (ModelRunner(model, cfg, device, self.kv, config.cuda_graphs, config.kernels) if ranks is None
                       else ranks.runner(self.kv, config.kernels, config.cuda_graphs))
        self.max_model_len = config.scheduler.max_model_len or cfg.max_position_embeddings
        self._rng = random.Random(config.seed)
        self.generation_defaults = generation_defaults or GenerationDefaults()
        self.stop_token_ids = tuple(dict.fromkeys(cfg.stop_token_ids + self.generation_defaults.stop_token_ids))
        """EOS, EoT and the generation config's ``eos_token_id`` ids: each ends a generation."""
        self._known: set[str] = set()
        self.stats = EngineStats()
        self.family_rules = rules_for(cfg)

    @classmethod
    def from_config(cls, config: EngineConfig) -> "Engine":
        path = resolve_model_path(config.model, config.revision, config.download_dir)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        raw = read_generation_config(config.generation_config, path)
        defaults = resolve_defaults(raw, dict(config.override_generation_config))
        tok = path if config.tokenizer is None else resolve_model_path(config.tokenizer, None, config.download_dir)
        tokenizer = Tokenizer.from_pretrained(tok)
        if config.tensor_parallel_size == 1:  # (expert parallelism over one rank changes nothing)
            model, cfg = load_model(path, device, dtype, config.quantization, config.quantize_lm_head)
            return cls(model, cfg, tokenizer, config, device, dtype, defaults)
        from unmask.server.engine.workers import RankGroup
        ranks = RankGroup.start(path, device, dtype, config)
        try:
            return cls(ranks.model, ranks.cfg, tokenizer, config, device, dtype, defaults, ranks)
        except BaseException:
            ranks.shutdown()
            raise

    def close(self) -> None:
        """Release what outlives the object: a tensor-parallel engine's worker processes."""
        if self.ranks is not None:
            self.ranks.shutdown()

    def _cache_bytes(self) -> int:
        if self.config.kv_cache_memory is not None:
            return int(self.config.kv_cache_memory)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free * 0.4)
        return CPU_CACHE_BYTES

    @property
    def model_info(self) -> ModelInfo:
        cfg = self.model_config
        return ModelInfo(cfg.family, cfg.architecture, cfg.vocab_size, self.max_model_len, cfg.mask_token_id,
                         self.generation_defaults)

    def validate(self, request: Request) -> None:
        """Raise RequestRejected (naming the problem) if the request can never run."""
        ids = request.prompt_token_ids
        if not ids:
            raise RequestRejected("the prompt is empty; give at least one token", "prompt")
        vocab = self.model_config.vocab_size
        bad = next((t for t in ids if not (isinstance(t, int) and 0 <= t < vocab)), None)
        if bad is not None:
            raise RequestRejected(f"prompt token id {bad} is out of range [0, {vocab})", "prompt")
        if self.model_config.mask_token_id in ids:
            raise RequestRejected(f"the prompt contains the mask token (id {self.model_config.mask_token_id}), "
                                  "which marks positions to generate", "prompt")
        self._validate_tokens(request)
        self._validate_structured(request)
        refused = self.family_rules.unsupported(request.params, bool(request.suffix_token_ids))
        if refused is not None:
            raise RequestRejected(*refused)
        canvas = self.family_rules.layout(len(ids), request.params)[1] - len(ids)
        context = len(ids) + len(request.suffix_token_ids)  # prompt + suffix (infilling)
        if context + canvas > self.max_model_len:
            raise RequestRejected(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your request has "
                f"{context} input tokens and a generation canvas of {canvas} tokens (max_tokens rounded up to a "
                f"multiple of block_length). Please reduce the length of the input or of max_tokens.",
                "prompt", "context_length_exceeded")
        if request.params.cache != "none" and not self.kv.can_ever_fit(context + canvas):
            cap = self.kv.num_pages * self.kv.page_size
            raise RequestRejected(f"the cache holds {cap} tokens; this request needs {context + canvas} "
                                  f"(raise --kv-cache-memory or use cache='none')", "cache", "cache_too_small")

    def _validate_tokens(self, request: Request) -> None:
        """Suffix, logit_bias and stop_token_ids name token ids of this vocabulary; the suffix holds no mask."""
        vocab, p = self.model_config.vocab_size, request.params
        for field, ids in (("suffix", request.suffix_token_ids), ("logit_bias", [t for t, _ in p.logit_bias]),
                           ("stop_token_ids", p.stop_token_ids)):
            bad = next((t for t in ids if not (isinstance(t, int) and 0 <= t < vocab)), None)
            if bad is not None:
                raise RequestRejected(f"{field} token id {bad} is out of range [0, {vocab})", field)
        if self.model_config.mask_token_id in request.suffix_token_ids:
            raise RequestRejected(f"the suffix contains the mask token (id {self.model_config.mask_token_id})",
                                  "suffix")

    @functools.cached_property
    def grammars(self) -> GrammarCompiler:
        """The grammar compiler (built at the first constrained request: unconstrained serving never needs it)."""
        if self.tokenizer is None:
            raise RequestRejected("structured outputs need the model's tokenizer, which this engine lacks",
                                  "structured_outputs")
        try:
            return GrammarCompiler(self.tokenizer, self.model_config.vocab_size, self.stop_token_ids)
        except ValueError as exc:
            raise RequestRejected(f"structured outputs are not available for this model: the grammar engine cannot "
                                  f"read its tokenizer ({exc})", "structured_outputs", "unsupported_tokenizer") from None

    def _validate_structured(self, request: Request) -> None:
        """Compile the request's constraint (cached): RequestRejected naming the problem if it cannot be."""
        spec = request.params.structured_outputs
        if spec is None:
            return
        try:
            self.grammars.compile(spec)
        except GrammarError as exc:
            raise RequestRejected(str(exc), "structured_outputs", "invalid_structured_output") from None

    def add_requests(self, requests: list[Request]) -> None:
        """Validate every request, then queue them all (none is queued if any is refused)."""
        ids = [r.request_id for r in requests]
        clash = next((i for i in ids if i in self._known), None)
        if clash is not None or len(set(ids)) != len(ids):
            raise RequestRejected(f"request id {clash or ids[0]!r} is already in use", None, "duplicate_id")
        for r in requests:
            self.validate(r)
        self.enqueue(requests)

    def enqueue(self, requests: list[Request]) -> None:
        """Queue requests that :meth:`validate` accepted (AsyncEngine validates on the caller's side)."""
        for r in requests:
            if r.request_id in self._known:
                raise RequestRejected(f"request id {r.request_id!r} is already in use", None, "duplicate_id")
        for r in requests:
            seed = r.params.seed if r.params.seed is not None else self._rng.getrandbits(63)
            seq = Sequence(r, self.model_config.mask_token_id, self.stop_token_ids, seed, self.family_rules,
                           self._cached(r))
            if r.params.structured_outputs is not None:
                seq.grammar = self.grammars.state(r.params.structured_outputs)
            self.scheduler.add(seq)
            self._known.add(r.request_id)

    def _cached(self, request: Request) -> bool:
        """The request uses the K/V cache: its params ask for one, or its family's prefix cache is exact
        (block-causal) and the cache can ever hold its canvas (else it runs uncached, still exact)."""
        if request.params.cache != "none":
            return True
        rules, n = self.family_rules, len(request.prompt_token_ids)
        return rules.block_causal and self.kv.can_ever_fit(rules.layout(n, request.params)[1])

    def add_request(self, request: Request) -> None:
        """Validate and queue one request; raises RequestRejected before anything is admitted."""
        self.add_requests([request])

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
            result = self.runner.run(batch)
        except EngineDeadError:  # e.g. a tensor-parallel rank died: no step can run any more
            raise
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
        st.observe_iteration(batch.num_tokens)
        for kind, ran, (pos, _) in zip(batch.kinds, result.ran_forward, result.commits):
            st.nfe += int(ran)
            st.committed_tokens += len(pos)
            if ran:
                st.refresh_steps += int(kind is StepKind.REFRESH)
                st.block_steps += int(kind is StepKind.BLOCK)
        st.output_tokens += sum(len(o.new_token_ids) for o in outs)
