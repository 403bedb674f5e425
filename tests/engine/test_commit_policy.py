"""The commit policy: the engine selects commits through ``ops.select_commits`` on either backend, the
vectorised factor rule equals Fast-dLLM's loop, and fixed-schedule ties follow the reference's topk."""
import os

import pytest
import torch

from unmask import LLM, DiffusionParams
from unmask.server.engine import commit_counts, commit_policy
from unmask.server.engine.client import Request
from unmask.server.engine.sequence import Sequence

if not torch.cuda.is_available():  # Triton reads it when its kernels are defined (as tests/kernels/conftest.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

PARAMS = [DiffusionParams(max_tokens=4, block_length=2, steps=4),
          DiffusionParams(max_tokens=4, block_length=2, threshold=0.5, cache="dual", seed=1),
          DiffusionParams(max_tokens=4, block_length=2, factor=1.0, cache="prefix", seed=2)]


def _count_select_calls(llm: LLM, table: dict, name: str, monkeypatch) -> tuple[int, int]:
    """Run PARAMS through ``llm`` counting calls of table[name]; -> (calls, engine iterations)."""
    calls = []
    inner = table[name]
    monkeypatch.setitem(table, name, lambda *a: calls.append(1) or inner(*a))
    it0 = llm.engine.stats.iterations
    llm.generate([[1, 2, 3], [4, 5], [6]], PARAMS)
    return len(calls), llm.engine.stats.iterations - it0


@pytest.mark.interpret
@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test on CPU tensors")
def test_engine_selects_commits_with_the_triton_kernel(ckpts, monkeypatch):
    """UNMASK_KERNELS=triton (the interpreter on CPU): every engine iteration with a forward calls the
    Triton select_commits once for its whole batch."""
    pytest.importorskip("triton")
    from unmask.kernels.backend import triton_table

    monkeypatch.setenv("UNMASK_KERNELS", "triton")
    llm = LLM(str(ckpts["dense"]), device="cpu", dtype="float32")
    calls, iterations = _count_select_calls(llm, triton_table(), "select_commits", monkeypatch)
    assert iterations > 0 and calls == iterations


def test_engine_selects_commits_with_the_torch_spec(ckpts, monkeypatch):
    from unmask.kernels.torch_ref import select

    monkeypatch.setenv("UNMASK_KERNELS", "torch")
    llm = LLM(str(ckpts["dense"]), device="cpu", dtype="float64")
    calls, iterations = _count_select_calls(llm, vars(select), "select_commits", monkeypatch)
    assert iterations > 0 and calls == iterations


def _factor_loop(conf: list[float], f: float) -> int:
    """Fast-dLLM's factor rule as written there (sorted descending; a break at the last index accepts all)."""
    c, n = sorted(conf, reverse=True), len(conf)
    top = n
    for i in range(1, n):
        if c[i] < 1.0 - f / (i + 2):
            top = i
            break
    return n if top == n - 1 else top


def test_factor_count_equals_fast_dllm_loop():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        w = int(torch.randint(1, 9, (1,), generator=g))
        conf = (1 - torch.rand(w, generator=g, dtype=torch.float64) ** 3).tolist()
        n = int(torch.randint(0, w + 1, (1,), generator=g))
        f = float(torch.rand(1, generator=g)) * 2
        row = torch.tensor(conf[:n] + [float("-inf")] * (w - n), dtype=torch.float64)
        k = commit_counts.factor_k(row.sort(descending=True).values[None], torch.tensor([n]),
                                   torch.tensor([f], dtype=torch.float64))
        assert int(k) == _factor_loop(conf[:n], f)


def test_fixed_schedule_ties_follow_reference_topk():
    """Equal confidences at the k-th place: the committed set is 1-D topk's over the canvas row, as in the
    reference, not the lower positions."""
    seq = Sequence(Request("t", (1, 2, 3), DiffusionParams(max_tokens=8, block_length=8, steps=4)), 95, (94,), 0)
    slots = [commit_policy.candidates(seq)]
    plan = commit_policy.build_plan([seq], slots, torch.device("cpu"))
    conf = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.9, 0.2, 0.9, 0.3], dtype=torch.float64)  # four tied at 0.9
    x0 = torch.arange(10, 18)
    row = torch.full((seq.length,), float("-inf"), dtype=torch.float64)
    row[slots[0]] = conf
    want = sorted(torch.topk(row, 2).indices.tolist())
    (pos, tok), = commit_policy.select(plan, torch.zeros(8, 96, dtype=torch.float64), x0, conf, 94, 93)
    assert sorted(pos) == want and tok == [10 + p - 3 for p in pos]


def test_tied_sequences_of_a_batch_each_follow_their_own_1d_topk():
    """A batch of tied sequences with different canvas lengths, k and candidate counts (so padded slots): each
    one's committed set equals 1-D topk's over its own canvas row."""
    specs = [(8, 8, 4), (16, 16, 4), (8, 8, 2), (16, 8, 8), (8, 8, 4)]  # (max_tokens, block_length, steps)
    seqs = [Sequence(Request(f"t{i}", (1, 2, 3)[: 1 + i % 3], DiffusionParams(max_tokens=m, block_length=bl, steps=s)),
                     95, (94,), 0) for i, (m, bl, s) in enumerate(specs)]
    slots = [commit_policy.candidates(s) for s in seqs]
    plan = commit_policy.build_plan(seqs, slots, torch.device("cpu"))
    g = torch.Generator().manual_seed(3)
    conf = [torch.where(torch.rand(sl.numel(), generator=g) < 0.6, 0.9, torch.rand(sl.numel(), generator=g) / 2)
            .double() for sl in slots]
    x0 = torch.arange(sum(sl.numel() for sl in slots))
    commits = commit_policy.select(plan, torch.zeros(x0.numel(), 96, dtype=torch.float64), x0, torch.cat(conf), 94, 93)
    start, tied = 0, 0
    for seq, sl, c, (pos, tok) in zip(seqs, slots, conf, commits):
        row = torch.full((seq.length,), float("-inf"), dtype=torch.float64)
        row[sl] = c
        k = commit_counts.step_k(seq)
        want = torch.topk(row, k).indices.sort().values
        assert sorted(pos) == want.tolist()
        assert sorted(tok) == (torch.searchsorted(sl, want) + start).tolist()
        best = c.sort(descending=True).values
        tied += bool(best[k - 1] == best[k])
        start += sl.numel()
    assert tied >= 3  # the tie path ran for most of them


def test_reference_topk_never_commits_off_the_candidates():
    """k reaches past the finite confidences (candidates at −inf, as confidence_eos_eot_inf makes them): topk's
    picks among the −inf ties may fall on positions that are not masked, which the reference's write leaves as
    they are; the commits are exactly the reference's picks that are candidates, on CPU's topk path and on the
    ranked path's tie handling alike."""
    seq = Sequence(Request("t", (1, 2, 3), DiffusionParams(max_tokens=4, block_length=4, steps=1)), 95, (94,), 0)
    slots = [commit_policy.candidates(seq)]  # canvas positions 3..6, all masked; k = 4 at the only step
    plan = commit_policy.build_plan([seq], slots, torch.device("cpu"))
    assert plan.fixed_counts and int(plan.k[0]) == 4
    conf = torch.tensor([0.7, float("-inf"), 0.4, float("-inf")], dtype=torch.float64)
    row = torch.full((seq.length,), float("-inf"), dtype=torch.float64)
    row[slots[0]] = conf
    want = sorted(p for p in torch.topk(row, 4).indices.tolist() if p in slots[0].tolist())
    (pos, tok), = commit_policy.select(plan, torch.zeros(4, 96, dtype=torch.float64), torch.arange(10, 14), conf, 94, 93)
    assert sorted(pos) == want and {3, 5} <= set(pos) and set(pos) <= set(slots[0].tolist())
    assert tok == [10 + p - 3 for p in pos]
