"""Per-sequence commit selection, top-k or threshold, in one tiny kernel (spec: ``torch_ref/select.py``).

Legend: B sequences, W candidate slots per sequence, BW = next power of two >= W.

One program per sequence ranks its candidates by counting (rank_i = #{candidates j: c_j > c_i, or
c_j == c_i and j < i}, a BW x BW compare), then commits rank < k[b], or conf >= threshold[b] plus
rank 0 when threshold[b] > 0. k and threshold are read on the device: no host sync.
"""
import torch
import triton
import triton.language as tl

from unmask.kernels.triton_ops._common import FP_FUSION, next_pow2

__all__ = ["select_commits"]


@triton.jit
def _select_kernel(conf_ptr, cand_ptr, k_ptr, thr_ptr, out_ptr, width, stride_c, stride_m, stride_o,
                   HALF: tl.constexpr, BLOCK_W: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK_W)  # [BW]
    ok = i < width
    c = tl.load(conf_ptr + b * stride_c + i, mask=ok, other=0.0)
    if HALF:  # the interpreter can only widen 16-bit floats to fp32
        c = c.to(tl.float32)
    c = c.to(tl.float64)  # exact: comparisons as in any wider dtype
    is_cand = ok & (tl.load(cand_ptr + b * stride_m + i, mask=ok, other=0) != 0)  # [BW]
    ci = c[:, None]  # [BW, 1] this slot
    cj = c[None, :]  # [1, BW] the others
    beats = is_cand[None, :] & ((cj > ci) | ((cj == ci) & (i[None, :] < i[:, None])))  # [BW, BW]
    rank = tl.sum(beats.to(tl.int32), axis=1)  # [BW]
    k = tl.load(k_ptr + b).to(tl.int32)
    thr = tl.load(thr_ptr + b).to(tl.float64)
    keep = tl.where(thr > 0, (c >= thr) | (rank == 0), rank < k)
    tl.store(out_ptr + b * stride_o + i, (is_cand & keep).to(tl.uint8), mask=ok)


def select_commits(conf: torch.Tensor, cand: torch.Tensor, k: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """conf [B, W] float, cand [B, W] bool, k [B] int32, threshold [B] float -> commit [B, W] bool.

    threshold[b] > 0: commit candidates with conf >= threshold[b], plus the best candidate; otherwise the
    k[b] best candidates. Best = highest conf, ties to the lower index; non-candidates never commit.
    """
    batch, width = conf.shape
    out = torch.empty((batch, width), dtype=torch.uint8, device=conf.device)  # [B, W]
    if batch == 0 or width == 0:
        return out.view(torch.bool)
    conf = conf if conf.stride(1) == 1 else conf.contiguous()
    cand = cand.contiguous().view(torch.uint8)  # [B, W] 0/1 bytes
    thr = threshold if threshold.dtype == torch.float64 else threshold.to(torch.float32)
    half = conf.dtype in (torch.float16, torch.bfloat16)
    _select_kernel[(batch,)](conf, cand, k.contiguous(), thr.contiguous(), out, width, conf.stride(0),
                             cand.stride(0), out.stride(0), HALF=half, BLOCK_W=next_pow2(width),
                             enable_fp_fusion=FP_FUSION, num_warps=4)
    return out.view(torch.bool)
