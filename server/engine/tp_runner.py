"""The tensor-parallel step: what every rank runs for one forward, and rank 0's runner around it.

Legend: B sequences, N packed tokens, M logit rows, V vocab, R ranks (the group's size), Vs = V/R.

Rank 0 (the engine's process) packs the step exactly as a single-device engine does
(``forward_inputs.build_inputs``), sends the forward's inputs (:class:`StepPayload`, host arrays) to the worker
ranks (``workers.py``), and then every rank runs :meth:`ShardStep.run` on its shard: the forward (two
all-reduces per layer, one for the embedding), its [M, Vs] slice of the logits, CFG on that slice. The step's
commit choices then need one more collective, one of two kinds:

- **reduce** (the common case): each rank applies the mask/EOS logit rules to its columns and reduces each row
  of its slice to (key, token, logit, logsumexp) (``ops.remask_partial``); a gather moves R·M·4 numbers
  and rank 0 combines them into the proposals and confidences of the whole rows (``ops.remask_combine``),
  equal to the single-device ones (the same argmax / Gumbel-max with the same noise per token id, ties to the
  lowest id). No rank ever holds a full [M, V] row.
- **gather**: when a rule of the step reads whole rows, the slices are gathered into [M, V] at rank 0
  and rank 0 runs the single-device ``commit_policy.propose``/``select`` on them. A step pays the gather when a
  sequence in it uses a sampling control (top-p/top-k/min-p, penalties, logit bias, min_tokens/ignore_eos bans:
  sorting and softmax over the row), a grammar constraint (its token bitmask), logprobs (log-softmax and the top
  alternatives), ``confidence_eos_eot_inf`` (a softmax with EoT removed) or Dream's margin/entropy ``alg``
  confidences (``PLAN_WITHOUT_LOGITS``). Other sequences of the same step
  ride along; steps without them stay on the reduce path.

CUDA graphs, per rank: a dual-cache block step whose rows are all greedy (T = 0) and on the reduce path runs on
every rank through that rank's captured graph (``cuda_graph.GraphedBlockStep``: the forward with its all-reduces,
its slice of the LM head, the logit rules on its columns and ``remask_partial``, one graph per batch bucket and
block width); the gather of the partials follows the replay, outside the graph. Steps with T > 0 rows (the
Gumbel noise is drawn only for those rows: a host decision) or on the gather path run eagerly. The kernels run on
each rank's local shapes (H/R heads, I/R units, Vs columns).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from unmask.kernels import ops
from unmask.kernels.options import KernelOptions
from unmask.server.config import ModelConfig
from unmask.server.engine import commit_policy
from unmask.server.engine.commit_policy import CommitPlan, LogitRules
from unmask.server.engine.cuda_graph import GraphedBlockStep, graph_capture
from unmask.server.engine.forward_inputs import ForwardInputs, build_inputs
from unmask.server.engine.kv_cache import KVCacheManager
from unmask.server.engine.model_runner import Commits, ModelRunner, guided_logits
from unmask.server.engine.sequence import Sequence, StepKind
from unmask.server.models.attention_meta import AttentionMetadata, packed_positions
from unmask.server.models.parallel import TensorParallel

BASE_RULES = ("temperature", "seeds", "mask_bias", "eos_bias")
"""LogitRules fields the reduce path applies per slice; any other rule present makes the step gather."""
RULE_FLAGS = ("biases",)
"""LogitRules fields that are host flags about the rules above, not rules of their own."""
PLAN_WITHOUT_LOGITS = ("slot_pos", "topk_row", "row_slot", "cand", "k", "threshold", "strict", "factor",
                       "uses_factor", "fixed_counts", "random_conf", "is_random", "grammar")
"""CommitPlan fields whose rules ``select`` applies without the logits; any other one present makes the step
gather (``eos_eot_rows``, ``dream_conf``, ``logprobs``: softmaxes over whole rows)."""


@dataclasses.dataclass
class StepPayload:
    """One forward's inputs for every rank, as host numpy arrays (pickled to the workers: numpy arrays pickle
    about 10× faster than tensors). ``tensors`` names them; ``meta`` is AttentionMetadata's fields (no caches)."""
    tensors: dict[str, np.ndarray]  # input_ids, positions [N]; logit_rows [M + M_cfg]; rules' [M] when reducing
    meta: dict[str, np.ndarray | int | None]
    num_cond_rows: int
    cfg_rows: list[tuple[np.ndarray, float]]
    reduce: bool  # the step's last collective: reduce (True) or gather whole rows (False)
    graph_w: int | None = None  # block width of a step through the ranks' graphed block step, else None

    @classmethod
    def of(cls, inp: ForwardInputs, reduce: bool, graph_w: int | None = None) -> "StepPayload":
        """The payload of rank 0's packed inputs (copied to the host)."""
        names = ("input_ids", "positions", "logit_rows")
        tensors = {name: _host(getattr(inp, name)) for name in names}
        if reduce:
            tensors.update({name: _host(getattr(inp.rules, name)) for name in BASE_RULES})
        meta = {f.name: _host(getattr(inp.meta, f.name)) for f in dataclasses.fields(inp.meta) if f.name != "kv_caches"}
        return cls(tensors, meta, inp.num_cond_rows, [(_host(r), w) for r, w in inp.cfg_rows], reduce, graph_w)


def _host(x):
    """A tensor -> a host numpy array; anything else as is."""
    return x.cpu().numpy() if isinstance(x, torch.Tensor) else x


def _device(x, device: torch.device):
    """A host numpy array -> a tensor on ``device``; anything else as is."""
    return torch.from_numpy(x).to(device) if isinstance(x, np.ndarray) else x


def needs_full_rows(inp: ForwardInputs) -> bool:
    """Does a rule of this step read whole logit rows (module docstring: the gather path)? A rule added later
    gathers until it is listed above as one that does not."""
    rules = [f.name for f in dataclasses.fields(LogitRules) if f.name not in BASE_RULES + RULE_FLAGS]
    plan = [f.name for f in dataclasses.fields(CommitPlan) if f.name not in PLAN_WITHOUT_LOGITS]
    return (any(getattr(inp.rules, name) is not None for name in rules)
            or any(getattr(inp.plan, name) is not None for name in plan))


class ShardStep:
    """One rank's part of a step: its model shard, its KV cache layers (H/R heads) and the group."""

    def __init__(self, model: torch.nn.Module, tp: TensorParallel, kv: KVCacheManager, device: torch.device,
                 cfg: ModelConfig, cuda_graphs: bool, kernels: KernelOptions):
        """``kv``: this rank's cache (H/R heads); ``kernels``: the resolved options its steps run under. Its graphed
        block step is as ``cuda_graph.graph_capture`` decides (captured, static buffers run eagerly, or none)."""
        self.model, self.tp, self.kv_layers, self.device, self.cfg = model, tp, kv.layers, device, cfg
        capture = graph_capture(cuda_graphs, device, kernels, kv)
        self.graphed = None if capture is None else GraphedBlockStep(
            model, kv.layers, kv.pages_for(cfg.max_position_embeddings), self.greedy_head, capture)

    @torch.inference_mode()
    def run(self, p: StepPayload) -> torch.Tensor:
        """Every rank, in the same order: the forward and the step's last collective -> at rank 0 the gathered
        [M, V] logits (gather) or every rank's partials [R, M, 4] float64 (reduce); None on the other ranks."""
        dev = self.device
        t = {name: _device(a, dev) for name, a in p.tensors.items()}
        meta = AttentionMetadata(**{name: _device(v, dev) for name, v in p.meta.items()})
        if meta.block_table is not None or meta.slot_mapping is not None:
            meta.kv_caches = self.kv_layers
        if p.graph_w is not None:  # every row greedy, reduce path: this rank's graph, then the gather
            (partials,) = self.graphed.run(t["input_ids"], t["positions"], meta, LogitRules(
                *(t[name] for name in BASE_RULES)), p.graph_w)  # [M, 4]
        else:
            hidden = self.model(t["input_ids"], t["positions"], meta, t["logit_rows"])  # [M + M_cfg, D]
            logits = self.model.compute_logits(hidden)  # [M + M_cfg, Vs]
            logits = guided_logits(logits, p.num_cond_rows, [(_device(r, dev), w) for r, w in p.cfg_rows])  # [M, Vs]
            if not p.reduce:
                return self.tp.gather_cols(logits)  # [M, V]
            partials = self.partials(logits, *(t[name] for name in BASE_RULES))  # [M, 4]
        parts = self.tp.gather(partials)  # R x [M, 4]
        return None if parts is None else torch.stack(parts)  # [R, M, 4]

    def partials(self, logits: torch.Tensor, temperature: torch.Tensor | None, seeds: torch.Tensor,
                 mask_bias: torch.Tensor, eos_bias: torch.Tensor) -> torch.Tensor:
        """This rank's logits slice [M, Vs] (modified in place) -> its ``remask_partial`` [M, 4] after the mask/EOS
        rules, which the rank holding that column applies (``temperature`` None: every row greedy)."""
        start = self.model.vocab_start
        for token, bias in ((self.cfg.mask_token_id, mask_bias), (self.cfg.eos_token_id, eos_bias)):
            if start <= token < start + logits.shape[1]:
                logits[:, token - start] += bias.to(logits.dtype)
        return ops.remask_partial(logits, temperature, seeds, start)

    def greedy_head(self, logits: torch.Tensor, rules: LogitRules) -> tuple[torch.Tensor]:
        """The graphed step's head on a rank: logits [N, Vs] -> (partials [N, 4],), no host synchronisation."""
        return (self.partials(logits, None, rules.seeds, rules.mask_bias, rules.eos_bias),)

    @torch.inference_mode()
    def logits(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Every rank: one full bidirectional forward of token_ids [L] -> the logits [L, V] at rank 0 (None
        elsewhere)."""
        n = token_ids.shape[0]
        h = self.model(token_ids.to(self.device), packed_positions([n], self.device),
                       AttentionMetadata.packed([n], self.device))
        return self.tp.gather_cols(self.model.compute_logits(h))


class TPModelRunner(ModelRunner):
    """Rank 0's runner: the single-device runner's batching and commit policy, with the forward and the
    proposal spread over the ranks (``group``: the worker processes, ``workers.RankGroup``)."""

    def __init__(self, shard: ShardStep, group, cfg: ModelConfig, device: torch.device, kv: KVCacheManager,
                 kernels=None):
        super().__init__(shard.model, cfg, device, kv, cuda_graphs=False, kernels=kernels)
        self.shard, self.group = shard, group
        self.graphed = shard.graphed  # the ranks' graphed steps (rank 0's own here): steps of greedy rows only

    def graphable(self, seq: Sequence, kind: StepKind) -> bool:
        return super().graphable(seq, kind) and seq.params.temperature == 0

    def _graph_step(self, seqs: list[Sequence], w: int) -> Commits:
        inp = build_inputs(seqs, [StepKind.BLOCK] * len(seqs), self.kv, self.device, all_block_rows=True)
        if needs_full_rows(inp):  # a rule reads whole rows: every rank's eager forward, rows gathered
            return self._step(inp)
        return self._reduced(inp, self.group.run_all("step", StepPayload.of(inp, True, w), self.shard.run))

    def _step(self, inp: ForwardInputs) -> Commits:
        cfg = self.cfg
        full = needs_full_rows(inp)
        out = self.group.run_all("step", StepPayload.of(inp, reduce=not full), self.shard.run)
        if full:
            x0, conf = commit_policy.propose(out, inp.rules, cfg.mask_token_id, cfg.eos_token_id)
            return commit_policy.select(inp.plan, out, x0, conf, cfg.eos_token_id, cfg.eot_token_id)
        return self._reduced(inp, out)

    def _reduced(self, inp: ForwardInputs, parts: torch.Tensor) -> Commits:
        """The ranks' partials [R, M, 4] -> the step's commits (``remask_combine``, then ``select``)."""
        x0, conf = ops.remask_combine(parts, self.shard.model.embed.dtype)  # [M], [M]
        return commit_policy.select(inp.plan, None, x0, conf, self.cfg.eos_token_id, self.cfg.eot_token_id)

    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """One full bidirectional forward over every rank -> [L, V] (float32, float64 for a float64 model)."""
        ids = torch.tensor(token_ids, dtype=torch.int64)
        out = self.group.run_all("logits", ids, self.shard.logits)
        return out.to(torch.promote_types(out.dtype, torch.float32))
