"""A readable port of LLaDA's reference ``generate()`` (ML-GSAI/LLaDA generate.py @65cbed2), the oracle the
engine is held to. Behaviour follows LLADA-SPEC.md §1 line by line, quirks included:

- ``prompt_index`` is computed once; ``steps`` becomes steps per block; the commit schedule gives the
  remainder to the first steps; a forward runs even on steps that commit nothing.
- CFG masks every prompt column in the unconditional copy and keeps generated tokens;
  ``logits = un + (w + 1)(cond − un)`` in the logits dtype.
- Gumbel-max in float64 (``exp(l) / (−log u)^T``); T = 0 returns the logits object itself.
- ``low_confidence``: softmax in the logits dtype, gathered at x0; ``random``: ``rand((B, L))``.
- ``confidence_eos_eot_inf`` is the chained assignment executed after sampling: at T = 0 both EOS and EoT
  logits become −inf before the confidence softmax; at T > 0 only EoT's (the noisy copy is separate).
- positions after the current block get −inf; top-k per row over the whole row (1-D ``torch.topk``).

Differences, each needed to run it here and none changing the algorithm: the model is any callable
``x [B, L] -> logits [B, L, V]``; the special ids are arguments instead of literals; an optional
``torch.Generator`` feeds every random draw; no attention mask (the engine's sequences are unpadded).
"""
import torch
import torch.nn.functional as F


def add_gumbel_noise(logits, temperature, generator=None):
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator, device=logits.device)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def get_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, device=mask_index.device, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, :remainder[i]] += 1
    return num_transfer_tokens


@torch.no_grad()
def generate(model, prompt, steps=128, gen_length=128, block_length=128, temperature=0.0, cfg_scale=0.0,
             remasking="low_confidence", mask_id=126336, eos_id=126081, eot_id=126348,
             logits_eos_inf=False, confidence_eos_eot_inf=False, generator=None, suffix=None):
    """prompt [B, P] int64 -> x [B, P + gen_length (+ S)] int64 (prompt + every generated position). Infilling
    extension (not in the original): ``suffix`` [B, S] is appended after the masks; being unmasked it joins
    ``prompt_index`` (masked in CFG's unconditional copy), and ``x0_p[:, hi:] = -inf`` keeps it from commits."""
    s = 0 if suffix is None else suffix.shape[1]
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length + s), mask_id, dtype=torch.long,
                   device=prompt.device)
    x[:, :prompt.shape[1]] = prompt.clone()
    if s:
        x[:, prompt.shape[1] + gen_length:] = suffix.clone()
    prompt_index = x != mask_id

    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks

    for num_block in range(num_blocks):
        lo = prompt.shape[1] + num_block * block_length
        hi = prompt.shape[1] + (num_block + 1) * block_length
        block_mask_index = x[:, lo:hi] == mask_id
        num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                x_ = torch.cat([x, un_x], dim=0)
                logits = model(x_)
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(x)

            if logits_eos_inf:
                logits[:, :, eos_id] = -torch.inf

            logits_with_noise = add_gumbel_noise(logits, temperature=temperature, generator=generator)
            x0 = torch.argmax(logits_with_noise, dim=-1)

            if confidence_eos_eot_inf:
                # The reference's chained assignment: `logits_with_noise[:, :, eos] = logits[:, :, eot] = -inf`
                logits_with_noise[:, :, eos_id] = logits[:, :, eot_id] = -torch.inf

            if remasking == "low_confidence":
                p = F.softmax(logits, dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            elif remasking == "random":
                x0_p = torch.rand((x0.shape[0], x0.shape[1]), generator=generator, device=x0.device)
            else:
                raise ValueError(f"remasking={remasking!r}: expected 'low_confidence' or 'random'")

            x0_p[:, hi:] = -torch.inf

            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -torch.inf)

            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=num_transfer_tokens[j, i])
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
    return x
