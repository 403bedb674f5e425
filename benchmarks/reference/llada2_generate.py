"""A readable port of LLaDA2's reference ``generate`` (inclusionAI LLaDA2.0-mini ``modeling_llada2_moe.py``) and of
LLaDA2.1's editing phase: the oracle for the LLaDA2 family. Behaviour follows the published code:

- blocks are aligned to absolute positions: the canvas is ``ceil((P + gen_length) / block_length)`` blocks, the
  prompt fills the first ``P`` positions, decoding starts at block ``P // block_length`` (which may hold the prompt's
  tail); each step forwards ``x[:, :window_end]`` with the block-causal mask (a position sees its own block and
  every earlier one);
- ``steps = min(steps, gen_length // minimal_topk)`` steps per block; the commit schedule splits ``block_length``
  (not the block's mask count) over them, the remainder to the first steps;
- a step samples every block position (T = 0: argmax of softmax, the prob as confidence; T > 0: top-k / top-p
  filtered multinomial at T); masked positions with confidence ``> threshold`` commit if there are at least the
  scheduled count of them, else the ``min(count, masked)`` most confident commit; a block stops early once it
  has no mask left;
- ``eos_early_stop``: stop as soon as a committed EOS has no mask before it; after each block, stop if the
  generated region holds an EOS; the answer is cut after the first EOS (here: returned whole, callers cut);
- LLaDA2.1 editing (``editing_threshold`` set): in each step, already generated (non-prompt, non-mask) block
  positions whose prediction differs from their token with confidence ``> editing_threshold`` are rewritten;
  at least one masked position commits per step while masks remain (the minimum count is 1); once the block has
  no mask, up to ``max_post_steps`` further edit-only steps run, stopping at the first step that changes nothing.

Differences, none changing the algorithm where the published loop ends: ``model`` is any callable ``(x [1, L'],
block_length) -> logits [1, L', V]`` applying the block-causal mask itself; special ids are arguments; an optional
``torch.Generator`` feeds the multinomial draws; with editing, ``max_block_steps`` (default ``block_length +
max_post_steps``, the engine's cap) bounds a block's steps: the published loop never ends when the model keeps
proposing the mask token at a masked position while another position is edited (each such step "commits").
"""
import torch
import torch.nn.functional as F


def num_transfer_schedule(block_length: int, steps: int) -> list[int]:
    base, rem = divmod(block_length, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def sample(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
    """logits [W, V] -> (tokens [W], their probabilities [W]) as ``_sample_with_temperature_topk_topp``."""
    if temperature > 0:
        logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        srt, idx = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(srt, -1), -1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    tok = (torch.multinomial(probs, 1, generator=generator)[:, 0] if temperature > 0 else probs.argmax(-1))
    return tok, probs.gather(-1, tok[:, None])[:, 0]


def _m2t(conf, active, k, threshold):
    """Masked-to-token commits [W] bool: conf > threshold if at least k such, else the min(k, masked) best."""
    conf = torch.where(active, conf, float("-inf"))
    high = conf > threshold
    if int(high.sum()) >= k:
        return high
    pick = torch.zeros_like(active)
    pick[torch.topk(conf, min(k, int(active.sum()))).indices] = True
    return pick


@torch.no_grad()
def generate(model, prompt, gen_length=128, block_length=32, steps=32, temperature=0.0, top_k=None, top_p=None,
             eos_early_stop=False, minimal_topk=1, threshold=0.95, editing_threshold=None, max_post_steps=16,
             mask_id=156895, eos_id=156892, generator=None, max_block_steps=None):
    """prompt [1, P] int64 -> x [1, total] int64 (the whole aligned canvas; the answer is x[0, P:P + gen_length]
    cut after its first EOS)."""
    p = prompt.shape[1]
    steps = min(steps, gen_length // minimal_topk)
    num_blocks = -(-(p + gen_length) // block_length)
    x = torch.full((1, num_blocks * block_length), mask_id, dtype=torch.long)
    x[:, :p] = prompt
    schedule = num_transfer_schedule(block_length, steps)
    for blk in range(p // block_length, num_blocks):
        end = (blk + 1) * block_length
        lo = end - block_length
        editable = torch.arange(lo, end) >= p  # [W] generated (non-prompt) positions of the block
        post = 0
        cap = max_block_steps or block_length + max_post_steps
        for step in range(cap if editing_threshold is not None else steps):
            active = x[0, lo:end] == mask_id  # [W]
            if not active.any():
                if editing_threshold is None or post >= max_post_steps:
                    break
                post += 1
            tok, conf = sample(model(x[:, :end], block_length)[0, -block_length:], temperature, top_k, top_p, generator)
            k = 1 if editing_threshold is not None else schedule[step]
            commit = _m2t(conf, active, k, threshold) if active.any() else torch.zeros_like(active)
            if editing_threshold is not None:
                edit = editable & ~active & (tok != x[0, lo:end]) & (conf > editing_threshold)
                if not (commit | edit).any():
                    break
                commit = commit | edit
            x[0, lo:end] = torch.where(commit, tok, x[0, lo:end])
            if eos_early_stop and (tok[commit] == eos_id).any():
                eos = (x[0] == eos_id).nonzero()
                if eos.numel() and not (x[0, p:int(eos[0, 0])] == mask_id).any():
                    return x
        if (x[0, p:end] == eos_id).any():
            break
    return x
