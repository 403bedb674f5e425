"""ModelRunner: one engine iteration's tensors, forward, and commit choices.

Legend: B sequences fed, N packed tokens, M masked block rows (logit rows), V vocab, W block width,
L canvas length. Each sequence keeps positions 0..L−1 and attends only to its own tokens, so a packed
step equals an unpadded batch-1 run. Logits are computed only for masked positions of the current
block (exact: the reference excludes every other position from commits).
"""
from __future__ import annotations

import torch

from unmask.kernels import ops
from unmask.server.config import ModelConfig
from unmask.server.engine.batch import Batch, StepResult
from unmask.server.engine.forward_inputs import ForwardInputs, build_inputs, row_seed
from unmask.server.engine.kv_cache import KVCacheManager
from unmask.server.engine.remasking import choose_commits
from unmask.server.engine.cuda_graph import GraphedBlockStep
from unmask.server.engine.sequence import Sequence, StepKind

class ModelRunner:
    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, device: torch.device, kv: KVCacheManager | None,
                 cuda_graphs: bool = True):
        self.model, self.cfg, self.device, self.kv = model, cfg, device, kv
        self.graphed = None
        if cuda_graphs and device.type == "cuda" and kv is not None:
            max_pages = kv.pages_for(cfg.max_position_embeddings)
            self.graphed = GraphedBlockStep(model, kv.layers, max_pages, cfg.mask_token_id, cfg.eos_token_id)

    def needs_forward(self, seq: Sequence) -> bool:
        """A fixed-schedule step that commits nothing changes nothing at any temperature: skip its forward."""
        return seq.params.parallel or seq.plan[seq.step_in_block] > 0

    def graphable(self, seq: Sequence, kind: StepKind) -> bool:
        """Dual-cache block steps have static shapes: they run through the captured CUDA graph."""
        return (self.graphed is not None and kind is StepKind.BLOCK and seq.params.cache == "dual"
                and not seq.params.confidence_eos_eot_inf)

    @torch.inference_mode()
    def run(self, batch: Batch) -> StepResult:
        commits: list[tuple[list[int], list[int]]] = [([], []) for _ in batch.seqs]
        ran = [self.needs_forward(s) for s in batch.seqs]
        for i, seq in enumerate(batch.seqs):  # reference order: random remasking draws every step
            if not ran[i] and seq.params.remasking == "random":
                torch.rand(seq.length, generator=seq.generator)
        fwd = [i for i, r in enumerate(ran) if r]
        graph = [i for i in fwd if self.graphable(batch.seqs[i], batch.kinds[i])]
        if graph:
            width = max({batch.seqs[i].params.block_length for i in graph},
                        key=lambda w: sum(batch.seqs[i].params.block_length == w for i in graph))
            graph = [i for i in graph if batch.seqs[i].params.block_length == width]
            for i, c in zip(graph, self._graph_step([batch.seqs[i] for i in graph], width)):
                commits[i] = c
        graphed = set(graph)
        eager = [i for i in fwd if i not in graphed]
        if eager:
            inputs = build_inputs([batch.seqs[i] for i in eager], [batch.kinds[i] for i in eager], self.kv, self.device)
            for i, c in zip(eager, self._step(inputs)):
                commits[i] = c
        return StepResult(commits=commits, ran_forward=ran)

    def _step(self, inp: ForwardInputs) -> list[tuple[list[int], list[int]]]:
        hidden = self.model(inp.input_ids, inp.positions, inp.meta)  # [N, D]
        logits = self.model.compute_logits(hidden[inp.logit_rows])  # [M(+M_cfg), V]
        logits = self._guided(logits, inp)  # [M, V]
        if inp.eos_inf_rows is not None:
            logits[inp.eos_inf_rows, self.cfg.eos_token_id] = float("-inf")
        if inp.no_mask_rows is not None:  # fast modes never propose the mask token (dInfer), so blocks progress
            logits[inp.no_mask_rows, self.cfg.mask_token_id] = float("-inf")
        x0, conf = ops.remask_confidence(logits, inp.temperature, inp.seeds)  # [M], [M]
        x0, conf = x0.cpu(), conf.cpu()
        out, row = [], 0
        for seq, n in zip(inp.seqs, inp.rows_per_seq):
            out.append(self._commit(seq, x0[row:row + n], conf[row:row + n], logits[row:row + n]))
            row += n
        return out

    def _graph_step(self, seqs: list[Sequence], w: int) -> list[tuple[list[int], list[int]]]:
        """Dual-cache block steps of equal block width through the captured graph (all W rows computed)."""
        dev = self.device
        ids = torch.cat([s.canvas[s.block_start:s.block_end] for s in seqs])  # [B·W]
        pos = torch.cat([torch.arange(s.block_start, s.block_end) for s in seqs])  # [B·W]
        table = torch.zeros(len(seqs), max(len(s.pages) for s in seqs), dtype=torch.int32)
        for i, s in enumerate(seqs):
            table[i, :len(s.pages)] = torch.tensor(s.pages, dtype=torch.int32)
        temp = torch.tensor([s.params.temperature for s in seqs for _ in range(w)], dtype=torch.float32)
        seeds = torch.tensor([row_seed(s.seed, s.num_steps, p) for s in seqs for p in range(s.block_start, s.block_end)])
        eos = torch.tensor([float("-inf") if s.params.logits_eos_inf else 0.0 for s in seqs for _ in range(w)])
        x0, conf = self.graphed.run(ids.to(dev), pos.to(dev), table.to(dev),
                                    torch.tensor([s.length for s in seqs], dtype=torch.int32, device=dev),
                                    torch.tensor([s.block_start for s in seqs], dtype=torch.int32, device=dev),
                                    temp.to(dev), seeds.to(dev), eos.to(dev), w)
        x0, conf = x0.cpu(), conf.cpu()
        out = []
        for i, s in enumerate(seqs):
            rows = i * w + (s.candidates() - s.block_start)  # candidate rows of this sequence
            out.append(self._commit(s, x0[rows], conf[rows], None))
        return out

    def _guided(self, logits: torch.Tensor, inp: ForwardInputs) -> torch.Tensor:
        """CFG (SMDM unsupervised guidance): un + (w + 1)(cond − un) in the logits dtype, as the reference."""
        m = inp.num_cond_rows
        cond, un = logits[:m], logits[m:]
        start = 0
        for rows, w in inp.cfg_rows:
            u = un[start:start + rows.numel()]
            cond[rows] = u + (w + 1) * (cond[rows] - u)
            start += rows.numel()
        return cond

    def _commit(self, seq: Sequence, x0: torch.Tensor, conf: torch.Tensor, logits) -> tuple[list[int], list[int]]:
        """Choose this sequence's commits. x0/conf [n] (CPU) and logits [n, V] (or None) are the rows of its
        candidate positions, ascending."""
        cand = seq.candidates()  # [n] canvas positions
        if seq.params.remasking == "random":
            c = torch.rand(seq.length, generator=seq.generator)[cand]  # reference: rand((B, L)) every step
        elif seq.params.confidence_eos_eot_inf:
            c = self._eos_eot_confidence(seq, logits, x0)
        else:
            c = conf
        row_conf = torch.full((seq.length,), float("-inf"), dtype=c.dtype)  # [L]
        row_conf[cand] = c
        k = seq.plan[seq.step_in_block] if seq.step_in_block < len(seq.plan) else 0
        picked = choose_commits(seq.params, row_conf, k)
        tokens = torch.zeros(seq.length, dtype=torch.int64)  # [L]
        tokens[cand] = x0
        return picked, tokens[picked].tolist()

    def _eos_eot_confidence(self, seq: Sequence, logits: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The reference's ``confidence_eos_eot_inf`` as it behaves (LLADA-SPEC.md §1.5): at T=0 the EOS and
        EoT logits are −inf before the confidence softmax; at T>0 only EoT is."""
        ids = [self.cfg.eot_token_id] if seq.params.temperature > 0 else [self.cfg.eos_token_id, self.cfg.eot_token_id]
        lf = logits.clone()
        lf[:, [i for i in ids if i is not None]] = float("-inf")
        p = torch.softmax(lf.to(torch.promote_types(lf.dtype, torch.float32)), dim=-1)
        c = p.gather(1, x0.to(p.device)[:, None])[:, 0].to(logits.dtype)
        return c.to(torch.promote_types(c.dtype, torch.float32)).cpu()
