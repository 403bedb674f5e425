"""A readable port of Dream's ``diffusion_generate`` (Dream-org ``generation_utils.py``, ``_sample``): the oracle
for the Dream family. Behaviour follows the published code:

- the canvas is the prompt padded with masks to ``max_length``; ``timesteps = linspace(1, eps, steps + 1)``;
  every step forwards the whole canvas (bidirectional) and shifts the logits right by one position;
- ``origin``: each masked position is revealed with probability ``1 − s/t`` (1 at the last step), its token
  sampled; other masked positions stay masked;
- ``maskgit_plus`` (max probability), ``topk_margin`` (top-1 minus top-2 probability), ``entropy`` (negative
  entropy) confidences: ``int(n_masked · (1 − s/t))`` positions commit (all at the last step), the most confident
  ones, or with ``alg_temp`` > 0 a multinomial draw from softmax(confidence / alg_temp);
- sampling: logits / T, top-p then top-k filters, softmax; T > 0 draws from the categorical, T = 0 takes the
  max (whose probability is the maskgit_plus confidence).

Differences, none changing the algorithm: ``model`` is any callable ``x [1, L] -> logits [1, L, V]`` (already
shifted, as ``hf_forward.dream_logits`` and our ``DreamModel`` return them); an optional ``torch.Generator``
feeds every draw; no attention mask or padding (one unpadded sequence).
"""
import torch
import torch.nn.functional as F

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy")


def sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin=False, neg_entropy=False, generator=None):
    """logits [M, V] -> (confidence [M], tokens [M]) as the published ``sample_tokens``."""
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        srt, idx = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(srt, -1), -1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), torch.finfo(logits.dtype).min)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        x0 = torch.multinomial(probs, 1, generator=generator)[:, 0]
        conf = probs.gather(-1, x0[:, None])[:, 0]
    else:
        conf, x0 = probs.max(dim=-1)
    if margin:
        top2 = torch.sort(probs, dim=-1, descending=True)[0]
        conf = top2[:, 0] - top2[:, 1]
    if neg_entropy:
        conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return conf, x0


@torch.no_grad()
def diffusion_generate(model, prompt, max_new_tokens=64, steps=64, eps=1e-3, alg="origin", alg_temp=None,
                       temperature=0.0, top_p=None, top_k=None, mask_id=151666, generator=None):
    """prompt [1, P] int64 -> x [1, P + max_new_tokens] int64."""
    x = F.pad(prompt, (0, max_new_tokens), value=mask_id)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask = x == mask_id  # [1, L]
        logits = model(x)[mask]  # [M, V]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.full((logits.shape[0],), mask_id, dtype=torch.long)
            reveal = torch.rand(x0.shape, generator=generator) < p_transfer
            x0[reveal] = sample_tokens(logits[reveal], temperature, top_p, top_k, generator=generator)[1]
            x[mask] = x0
            continue
        conf, x0 = sample_tokens(logits, temperature, top_p, top_k, margin=alg == "topk_margin",
                                 neg_entropy=alg == "entropy", generator=generator)
        n_mask = mask.sum() / mask.shape[0]
        n = int(n_mask * (1 - s / t)) if i < steps - 1 else int(n_mask)
        full = torch.full(x.shape, float("-inf"), dtype=logits.dtype)
        full[mask] = conf
        if n > 0:
            if not alg_temp:
                pick = torch.topk(full, n).indices
            else:
                pick = torch.multinomial(F.softmax(full / alg_temp, dim=-1), n, generator=generator)
            cand = torch.full_like(x, mask_id)
            cand[mask] = x0
            x[0, pick[0]] = cand[0, pick[0]]
    return x
