"""LLaDA SFT loss (and the MoE router balance loss) on a packed batch.

For each sequence b draw t_b ~ U(0, 1] (stratified over the batch: t_b = (perm_b + u_b) / B, which is
still uniform marginally but lowers the variance of the estimate), mask every response token
independently with probability t_b, keep the prompt, and score

    loss = (1/B) Σ_b (1/L_b) Σ_{masked i in b} CE(logits_i, x_i) / t_b

with L_b the response length of sequence b (answer + end of turn + EOS padding), as LLaDA's SFT does
(the 1/t weight makes it an upper bound on the negative log-likelihood).

Legend: N packed tokens, B sequences, M masked tokens, V vocab, T tokens into a MoE layer, E experts.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from recipes.sft_data import Batch
from unmask.kernels import ops
from unmask.server.models.attention_meta import AttentionMetadata

T_EPS = 1e-3
"""Lower clamp of t (avoids 1/t blow-ups; LLaDA's pre-training uses the same trick)."""


def mask_batch(batch: Batch, mask_id: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (noisy input_ids [N] int64, masked [N] bool, t per sequence [B] fp32)."""
    b = len(batch.seq_lens)
    t = (torch.randperm(b, generator=gen).float() + torch.rand(b, generator=gen)) / b  # [B] in [0, 1)
    t = T_EPS + (1 - T_EPS) * (1 - t)  # (0, 1] -> [eps, 1]
    u = torch.rand(batch.input_ids.shape, generator=gen)  # [N]
    masked = batch.response & (u < t[batch.seq_index])
    noisy = torch.where(masked, torch.full_like(batch.input_ids, mask_id), batch.input_ids)
    return noisy, masked, t


def sft_loss(model, batch: Batch, mask_id: int, eos_id: int, gen: torch.Generator,
             device: torch.device | str = "cpu"):
    """-> (loss scalar, stats dict) for one batch; ``loss`` has a graph for backward."""
    noisy, masked, t = mask_batch(batch, mask_id, gen)
    meta = AttentionMetadata.packed(batch.seq_lens, device)
    if batch.attn_blocks is not None:  # block-causal family: the sizes the batch was cut with
        meta.attn_blocks = torch.tensor(batch.attn_blocks, dtype=torch.int32, device=device)
    hidden = model(noisy.to(device), batch.positions.to(device), meta)  # [N, D]
    rows = torch.nonzero(masked).flatten().to(device)  # [M]
    logits = model.compute_logits(hidden[rows]).float()  # [M, V]
    ce = F.cross_entropy(logits, batch.input_ids.to(device)[rows], reduction="none")  # [M]
    resp_len = torch.zeros(len(batch.seq_lens)).index_add_(0, batch.seq_index, batch.response.float())  # [B]
    seq = batch.seq_index[masked]  # [M]
    weight = (1.0 / (t[seq] * resp_len[seq] * len(batch.seq_lens))).to(device)  # [M]
    loss = (ce * weight).sum()
    target = batch.input_ids.to(device)[rows]
    right = logits.argmax(-1) == target  # [M]
    content = target != eos_id  # [M] answer / end-of-turn tokens (not padding)
    stats = {"ce": float(ce.detach().mean()) if len(rows) else 0.0,
             "masked_acc": float(right.float().mean()) if len(rows) else 0.0,
             "answer_acc": float(right[content].float().mean()) if bool(content.any()) else 0.0}
    return loss, stats


class RouterBalance:
    """Softmax-routed MoE layers (LLaDA-MoE; layers with an expert bias use ``ExpertBiasBalance``). Collects each
    SparseMoE layer's input in a forward and returns the Switch-style balance loss E · Σ_e f_e · P_e (f_e: fraction
    of top-k slots routed to e, P_e: mean router probability)."""

    def __init__(self, model):
        self.inputs: list[tuple[torch.nn.Module, torch.Tensor]] = []
        self.handles = [m.register_forward_pre_hook(self._hook) for m in model.modules()
                        if hasattr(m, "gate") and hasattr(m, "top_k") and not hasattr(m, "expert_bias")]

    def _hook(self, module, args):
        if torch.is_grad_enabled():  # training forwards only
            self.inputs.append((module, args[0]))

    def pop_loss(self) -> torch.Tensor:
        """Balance loss averaged over layers since the last call (0 for a dense model)."""
        if not self.inputs:
            return torch.tensor(0.0)
        total = 0.0
        for module, x in self.inputs:
            probs = torch.softmax((x @ module.gate.t()).float(), dim=-1)  # [T, E]
            e = probs.shape[-1]
            ids = torch.topk(probs, module.top_k, dim=-1).indices  # [T, K]
            frac = torch.bincount(ids.flatten(), minlength=e).float() / ids.numel()  # [E]
            total = total + e * (frac * probs.mean(0)).sum()
        self.inputs.clear()
        return total / len(self.handles)


class ExpertBiasBalance:
    """Auxiliary-loss-free balancing of sigmoid-routed layers with an expert bias (LLaDA2 / Ling 2.0): the bias
    only steers which experts are picked (the weights are the unbiased scores), so it gets no gradient; instead,
    after each optimizer step, ``update`` moves each layer's bias by ``rate`` toward balance,
    b_e += rate · sign(mean load - load_e), load_e counting the top-k slots routed to expert e in the last
    training forward."""

    def __init__(self, model, rate: float = 1e-3, fresh: bool = True):
        """``fresh``: start every bias at 0 (a new model; resumed weights keep theirs)."""
        self.rate, self.loads = rate, []
        for m in model.modules():
            if hasattr(m, "expert_bias"):
                m.expert_bias.requires_grad_(False)
                if fresh:
                    with torch.no_grad():
                        m.expert_bias.zero_()
                m.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        if torch.is_grad_enabled():  # training forwards only
            with torch.no_grad():
                cfg = module.cfg
                logits = args[0].float() @ module.gate.float().t()  # [T, E]
                _, ids = ops.moe_route_grouped(logits, module.expert_bias, module.top_k, cfg.n_group, cfg.topk_group,
                                               cfg.routed_scaling_factor, torch.float32)  # [T, K]
                self.loads.append((module, torch.bincount(ids.flatten(), minlength=cfg.num_experts).float()))

    def update(self) -> float:
        """Apply the bias step for the loads collected since the last call; returns the worst layer's
        max load / mean load (1.0 = perfectly balanced)."""
        worst = 1.0
        for module, load in self.loads:
            with torch.no_grad():
                module.expert_bias.add_(self.rate * torch.sign(load.mean() - load))
            worst = max(worst, float(load.max() / load.mean().clamp_min(1e-9)))
        self.loads.clear()
        return worst
