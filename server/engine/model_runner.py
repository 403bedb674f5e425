"""ModelRunner: one engine iteration's tensors, forward, and commit choices.

Legend: B sequences fed, N packed tokens, M logit rows, V vocab, W block width, L canvas length. Each
sequence keeps positions 0..L−1 and attends only to its own tokens, so a packed step equals an unpadded
batch-1 run. Both paths pack with ``forward_inputs.build_inputs`` and decide commits with
``commit_policy``: eager = packed forward (its last block computes the commit candidates' rows only, from their
queries on), their logits, ``propose``, ``select``; graphed (dual-cache block steps on CUDA) = the captured
forward + ``propose`` on every block row, then the same ``select``.
"""
from __future__ import annotations

import torch

from unmask.kernels import options
from unmask.kernels.options import KernelOptions
from unmask.server.config import ModelConfig
from unmask.server.engine import commit_constrained, commit_policy
from unmask.server.engine.batch import Batch, StepResult
from unmask.server.engine.cuda_graph import GraphedBlockStep, graph_capture
from unmask.server.engine.forward_inputs import ForwardInputs, build_inputs
from unmask.server.engine.kv_cache import KVCacheManager
from unmask.server.engine.sequence import Sequence, StepKind

Commits = list[tuple[list[int], list[int]]]


class ModelRunner:
    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, device: torch.device, kv: KVCacheManager | None,
                 cuda_graphs: bool = True, kernels: KernelOptions | None = None):
        self.model, self.cfg, self.device, self.kv = model, cfg, device, kv
        self.kernels = options.resolve(kernels)  # the config's kernel options with environment overrides
        capture = graph_capture(cuda_graphs, device, self.kernels, kv)
        self.graphed = None if capture is None else GraphedBlockStep(
            model, kv.layers, kv.pages_for(cfg.max_position_embeddings), self.propose_head, capture)

    def propose_head(self, logits: torch.Tensor, rules) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The graphed step's head on one device: logits [N, V] -> (logits, x0 [N], conf [N]) after ``propose``."""
        return (logits, *commit_policy.propose(logits, rules, self.cfg.mask_token_id, self.cfg.eos_token_id))

    def graphable(self, seq: Sequence, kind: StepKind) -> bool:
        """Dual-cache block steps have static shapes: they run through the captured CUDA graph."""
        return (self.graphed is not None and kind is StepKind.BLOCK and seq.params.cache == "dual"
                and seq.grammar is None)  # constrained steps mask logits between forward and proposal: eager

    @torch.inference_mode()
    def run(self, batch: Batch) -> StepResult:
        """One denoising step for every sequence of ``batch``: their commits, with this runner's kernel options."""
        with options.use(self.kernels):
            return self._run(batch)

    def _run(self, batch: Batch) -> StepResult:
        commits: Commits = [([], []) for _ in batch.seqs]
        forced = commit_constrained.force_grammar(batch.seqs)  # None unless a sequence is constrained
        ran = [commit_policy.needs_forward(s) for s in batch.seqs]
        for seq, r in zip(batch.seqs, ran):
            if not r:
                commit_policy.skip_step(seq)
        fwd = [i for i, r in enumerate(ran) if r]
        graph = self._graph_group(batch, fwd)
        if graph:
            w = batch.seqs[graph[0]].params.block_length
            for i, c in zip(graph, self._graph_step([batch.seqs[i] for i in graph], w)):
                commits[i] = c
        eager = [i for i in fwd if i not in set(graph)]
        if eager:
            inputs = build_inputs([batch.seqs[i] for i in eager], [batch.kinds[i] for i in eager], self.kv, self.device)
            for i, c in zip(eager, self._step(inputs)):
                commits[i] = c
        return StepResult(commits=commit_constrained.merge_forced(commits, forced), ran_forward=ran)

    def _graph_group(self, batch: Batch, fwd: list[int]) -> list[int]:
        """Indices of the graphable steps sharing the most common block width (one graph per width)."""
        graph = [i for i in fwd if self.graphable(batch.seqs[i], batch.kinds[i])]
        if not graph:
            return []
        widths = [batch.seqs[i].params.block_length for i in graph]
        width = max(set(widths), key=widths.count)
        return [i for i, w in zip(graph, widths) if w == width]

    def _step(self, inp: ForwardInputs) -> Commits:
        """The eager path: packed forward, logits of the candidate rows only."""
        hidden = self.model(inp.input_ids, inp.positions, inp.meta, inp.logit_rows)  # [M(+M_cfg), D]
        logits = self.model.compute_logits(hidden)  # [M(+M_cfg), V]
        logits = self._guided(logits, inp)  # [M, V]
        x0, conf = commit_policy.propose(logits, inp.rules, self.cfg.mask_token_id, self.cfg.eos_token_id)
        return commit_policy.select(inp.plan, logits, x0, conf, self.cfg.eos_token_id, self.cfg.eot_token_id)

    def _graph_step(self, seqs: list[Sequence], w: int) -> Commits:
        """Dual-cache block steps of equal block width through the captured graph (all W rows computed)."""
        inp = build_inputs(seqs, [StepKind.BLOCK] * len(seqs), self.kv, self.device, all_block_rows=True)
        logits, x0, conf = self.graphed.run(inp.input_ids, inp.positions, inp.meta, inp.rules, w)
        if inp.rules.sampling is not None:  # sampling controls are not captured: apply them and propose again
            x0, conf = commit_policy.propose_sampled(logits, inp.rules)
        return commit_policy.select(inp.plan, logits, x0, conf, self.cfg.eos_token_id, self.cfg.eot_token_id)

    def _guided(self, logits: torch.Tensor, inp: ForwardInputs) -> torch.Tensor:
        return guided_logits(logits, inp.num_cond_rows, inp.cfg_rows)


def guided_logits(logits: torch.Tensor, num_cond_rows: int, cfg_rows: list[tuple[torch.Tensor, float]]) -> torch.Tensor:
    """CFG (SMDM unsupervised guidance): un + (w + 1)(cond − un) in the logits dtype, as the reference. logits
    [M + M_cfg, C] (C: the vocabulary or one rank's slice of it) -> [M, C]; elementwise per column."""
    cond, un = logits[:num_cond_rows], logits[num_cond_rows:]
    start = 0
    for rows, w in cfg_rows:
        u = un[start:start + rows.numel()]
        cond[rows] = u + (w + 1) * (cond[rows] - u)
        start += rows.numel()
    return cond
