"""Rotary position embedding, NeoX ("rotate_half") layout, as in both LLaDA families, and LLaDA-MoE's
per-head QK-norm followed by RoPE.

Legend: N tokens, H query heads, Hk key heads, D head dim.
"""
import torch

from unmask.kernels.torch_ref.norm import rms_norm


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """positions [N] int -> (cos [N, D], sin [N, D]) in fp32 (fp64 when dtype is fp64).

    inv_freq = 1 / theta^(arange(0, D, 2) / D); angles = pos × inv_freq, duplicated over both halves.
    """
    cdt = torch.promote_types(dtype, torch.float32)
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=cdt) / head_dim))
    freqs = positions.to(cdt)[:, None] * inv_freq[None, :]  # [N, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [N, D]
    return emb.cos(), emb.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, D], cos [N, D], signed_sin [N, D] = [−s₁, s₂] (``_signed_sin``) -> x·cos + rotate_half(x)·sin, in
    x's dtype. rotate_half(x)·sin = [−x₂·s₁, x₁·s₂] is formed as [x₂, x₁]·[−s₁, s₂] (the same products: negating a
    factor negates the product exactly), so the halves swap is one copy and the last two ops run in place."""
    half = x.shape[-1] // 2
    out = x * cos[:, None, :]  # [N, H, D]
    swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)  # [N, H, D]
    swapped *= signed_sin[:, None, :]
    out += swapped
    return out


def _signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin [N, D] -> [N, D] with its first half negated (the sign rotate_half puts on x₂)."""
    half = sin.shape[-1] // 2
    return torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)


def _heads_of_one_buffer(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """q [N, H, D], k [N, Hk, D] -> a [N, H + Hk, D] view over both when k's heads directly follow q's in the same
    rows (the fused qkv projection's output), else None: one rotation then serves both."""
    n, h, d = q.shape
    if (q.dtype != k.dtype or k.shape[0] != n or k.shape[2] != d or q.stride() != k.stride()
            or q.stride()[1:] != (d, 1) or q.untyped_storage().data_ptr() != k.untyped_storage().data_ptr()
            or k.data_ptr() != q.data_ptr() + h * d * q.element_size()):
        return None
    return q.as_strided((n, h + k.shape[1], d), q.stride())


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, theta: float, rotate_fp32: bool):
    """q [N, H, D], k [N, Hk, D], positions [N] -> (q, k) rotated, same dtypes: ``rope_apply`` with the
    tables of ``rope_cos_sin``."""
    cos, sin = rope_cos_sin(positions, q.shape[-1], theta, q.dtype)
    return rope_apply(q, k, cos, sin, rotate_fp32)


def rope_apply(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate_fp32: bool):
    """q [N, H, D], k [N, Hk, D], cos/sin [N, D] from ``rope_cos_sin`` -> (q, k) rotated, same dtypes.

    rotate_fp32=True (dense LLaDA, ``rope_full_precision``): q and k are upcast to fp32, rotated and cast
    back. False (LLaDA-MoE, HF default rope): cos/sin are cast to the activation dtype first and the
    rotation runs in that dtype. Tables narrower than D (cos/sin [N, R], R < D: partial rotary, LLaDA2's
    ``partial_rotary_factor``) rotate the leading R dims of each head and leave the rest unchanged.
    """
    r = cos.shape[-1]
    if r < q.shape[-1]:  # partial rotary (LLaDA2): the leading r dims rotate, the rest pass through
        qr, kr = rope_apply(q[..., :r], k[..., :r], cos, sin, rotate_fp32)
        return torch.cat([qr, q[..., r:]], -1), torch.cat([kr, k[..., r:]], -1)
    if not rotate_fp32:
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    cdt, signed_sin = cos.dtype, _signed_sin(sin)
    qk = _heads_of_one_buffer(q, k)
    if qk is not None:  # elementwise: rotating q and k as one tensor gives each the same values as alone
        out = _rotate(qk.to(cdt), cos, signed_sin).to(q.dtype)  # [N, H + Hk, D]
        return out[:, :q.shape[1]], out[:, q.shape[1]:]
    return _rotate(q.to(cdt), cos, signed_sin).to(q.dtype), _rotate(k.to(cdt), cos, signed_sin).to(k.dtype)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate_fp32: bool,
                 q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float):
    """q [N, H, D], k [N, Hk, D], cos/sin [N, D] from ``rope_cos_sin``, q_weight/k_weight [D] -> (q, k).

    LLaDA-MoE's attention input (LLADA-SPEC.md §4): each head of q and k RMS-normalised over D with its own
    weight (``norm.rms_norm``), then rotated by ``rope_apply``.
    """
    qn = rms_norm(q.reshape(-1, q.shape[-1]), q_weight, eps).view(q.shape)  # [N, H, D]
    kn = rms_norm(k.reshape(-1, k.shape[-1]), k_weight, eps).view(k.shape)  # [N, Hk, D]
    return rope_apply(qn, kn, cos, sin, rotate_fp32)
