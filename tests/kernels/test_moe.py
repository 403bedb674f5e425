"""MoE routing, sync-free alignment and the fused expert mixture: Triton vs the PyTorch specification."""
import pytest
import torch

from tests.kernels.tolerance import DEVICE, assert_fa_close, dtypes, gen, randn
from unmask.kernels.torch_ref import moe as ref
from unmask.kernels.triton_ops import moe as tri
from unmask.kernels.triton_ops.moe_align import max_blocks, moe_align


def distinct_logits(tokens, experts, seed):
    """Router logits without ties (torch.topk's order on ties is unspecified): a shuffled grid per row."""
    g = gen(seed)
    base = torch.linspace(-3, 3, experts, dtype=torch.float64)
    rows = torch.stack([base[torch.randperm(experts, generator=g)] for _ in range(tokens)])
    return (rows + 0.01 * torch.rand(tokens, 1, generator=g, dtype=torch.float64)).float().to(DEVICE)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("tokens,experts,top_k", [(1, 8, 2), (13, 64, 8), (5, 3, 3)], ids=str)
def test_moe_route(out_dtype, tokens, experts, top_k):
    logits = distinct_logits(tokens, experts, seed=experts)
    w, ids = tri.moe_route(logits, top_k, out_dtype)
    rw, rids = ref.moe_route(logits, top_k, out_dtype)
    rw64, _ = ref.moe_route(logits.double(), top_k, torch.float64)
    assert ids.dtype == torch.int64 and w.dtype == out_dtype
    assert torch.equal(ids, rids)
    assert_fa_close(w, rw, rw64, out_dtype if out_dtype != torch.float32 else torch.float32, "weights")


def routed(tokens, experts, top_k, seed, allowed=None, hot=None):
    """Distinct expert ids per token, drawn from ``allowed``; ``hot`` (if given) is in every token's set."""
    g = gen(seed)
    pool = torch.tensor(allowed if allowed is not None else range(experts))
    rows = []
    for _ in range(tokens):
        row = pool[torch.randperm(len(pool), generator=g)][:top_k]
        if hot is not None and hot not in row:
            row[0] = hot
        rows.append(row)
    ids = torch.stack(rows).to(DEVICE)
    weights = torch.rand(tokens, top_k, generator=g, dtype=torch.float64)
    return weights, ids


@pytest.mark.parametrize("tokens, one_program", [(70, True), (70, False), (300, False)],
                         ids=["one-program", "four-kernels", "four-kernels-3-chunks"])
@pytest.mark.parametrize("block_m", [16, 32])
def test_align_invariants(block_m, tokens, one_program):
    """A permutation of all assignments, grouped by expert in ascending order, padded with the sentinel,
    experts without tokens get no block, one expert with every token spans several blocks; the same from the
    one-program path (up to 256 assignments) and the four kernels (one chunk of 256, or several)."""
    _, ids = routed(tokens, 6, 2, seed=1, allowed=[0, 1, 3, 4], hot=3)  # experts 2 and 5 empty, 3 gets every token
    n_assign = ids.numel()
    sorted_ids, block_expert = moe_align(ids, 6, block_m, one_program=one_program)
    assert block_expert.numel() == max_blocks(n_assign, 6, block_m)
    used = int((block_expert >= 0).sum())
    assert (block_expert[:used] >= 0).all() and (block_expert[used:] == -1).all()
    flat = ids.flatten().cpu()
    slots = sorted_ids[:used * block_m].cpu()
    real = slots[slots < n_assign]
    assert sorted(real.tolist()) == list(range(n_assign))
    assert (slots[slots >= n_assign] == n_assign).all()
    keys = [(int(flat[a]), int(a)) for a in real]
    assert keys == sorted(keys)  # expert-major, stable inside an expert
    for i in range(used):
        blk = slots[i * block_m:(i + 1) * block_m]
        assert (flat[blk[blk < n_assign].long()] == block_expert[i].cpu()).all()
    counts = torch.bincount(flat, minlength=6)
    assert used == int(((counts + block_m - 1) // block_m).sum())


def test_align_paths_agree_and_one_program_has_a_limit():
    _, ids = routed(32, 64, 8, seed=2)  # a LLaDA-MoE batch-1 step: 256 assignments over 64 experts
    one, four = moe_align(ids, 64, 16, one_program=True), moe_align(ids, 64, 16, one_program=False)
    used = int((one[1] >= 0).sum())
    assert torch.equal(one[1], four[1]) and torch.equal(one[0][:used * 16], four[0][:used * 16])
    _, many = routed(33, 64, 8, seed=3)
    with pytest.raises(ValueError, match="at most 256 assignments"):
        moe_align(many, 64, 16, one_program=True)


MOE_CASES = [  # (T, D, E, I, K, routing)
    (1, 32, 4, 16, 1, {}),  # a single token
    (13, 40, 6, 24, 2, {}),  # odd D and I: tails in every tile
    (40, 32, 4, 16, 2, {"hot": 1}),  # expert 1 receives every token (3 M-blocks)
    (9, 32, 6, 16, 3, {"allowed": [0, 2, 3, 5]}),  # experts 1 and 4 receive nothing
]


@dtypes
@pytest.mark.parametrize("case", MOE_CASES, ids=lambda c: f"T{c[0]}-D{c[1]}-E{c[2]}-I{c[3]}-K{c[4]}")
def test_fused_moe(dtype, case):
    t, d, e, i, k, routing = case
    g = gen(t)
    x = randn(t, d, seed_gen=g, dtype=dtype)
    w_gate_up = randn(e, 2 * i, d, seed_gen=g, dtype=dtype, scale=d ** -0.5)
    w_down = randn(e, d, i, seed_gen=g, dtype=dtype, scale=i ** -0.5)
    weights, ids = routed(t, e, k, seed=t + 1, **routing)
    w_lp = weights.to(dtype).to(DEVICE)
    out = tri.fused_moe(x, w_gate_up, w_down, w_lp, ids)
    assert out.dtype == dtype
    lp = ref.fused_moe(x, w_gate_up, w_down, w_lp, ids)
    r64 = ref.fused_moe(x.double(), w_gate_up.double(), w_down.double(), w_lp.double(), ids)
    assert_fa_close(out, lp, r64, dtype, "fused_moe")
    assert torch.equal(out, tri.fused_moe(x, w_gate_up, w_down, w_lp, ids))  # deterministic


def test_fused_moe_from_route_and_empty_batch():
    """End to end with moe_route's output; zero tokens give an empty result."""
    g = gen(11)
    x = randn(6, 32, seed_gen=g)
    w_gate_up, w_down = randn(8, 32, 32, seed_gen=g, scale=0.2), randn(8, 32, 16, seed_gen=g, scale=0.25)
    weights, ids = tri.moe_route(distinct_logits(6, 8, seed=12), 2, torch.float32)
    out = tri.fused_moe(x, w_gate_up, w_down, weights, ids)
    lp = ref.fused_moe(x, w_gate_up, w_down, weights, ids)
    assert_fa_close(out, lp, ref.fused_moe(x.double(), w_gate_up.double(), w_down.double(), weights.double(), ids),
                    torch.float32, "route + moe")
    empty = tri.fused_moe(x[:0], w_gate_up, w_down, weights[:0], ids[:0])
    assert empty.shape == (0, 32)
