"""remask_confidence (one vocab pass, in-kernel hash Gumbel noise) and select_commits:
Triton vs the PyTorch specification. Tokens must match exactly, greedy and sampled alike."""
import pytest
import torch

from tests.kernels.tolerance import DEVICE, DTYPES, DTYPE_IDS, assert_fa_close, gen, randn
from unmask.kernels.torch_ref import remask as ref
from unmask.kernels.torch_ref import select as sel_ref
from unmask.kernels.triton_ops import remask as tri
from unmask.kernels.triton_ops import select as sel_tri

# Loads are widened to fp32 before any arithmetic, so bf16 logits work in the interpreter too.
REMASK_DTYPES = DTYPES if torch.bfloat16 in DTYPES else DTYPES + [torch.bfloat16]
remask_dtypes = pytest.mark.parametrize("dtype", REMASK_DTYPES, ids=[str(d)[6:] for d in REMASK_DTYPES])
TEMPS = [0.0, 0.0, 0.5, 1.0, 2.0, 0.0, 0.7]


def logits_with_ties(rows, vocab, dtype, seed):
    """randn·3 logits; row 1 gets two equal maxima (lowest index must win), row 2 some −inf entries."""
    g = gen(seed)
    x = randn(rows, vocab, seed_gen=g, scale=3.0).to(dtype)
    if rows > 1 and vocab > 4:
        top = x[1].max() + 1
        x[1, vocab // 3], x[1, vocab - 1] = top, top
    if rows > 2:
        x[2, ::7] = float("-inf")
    return x


def check(logits, temps, seeds, dtype, splits):
    x0, conf = tri.remask_fwd(logits, temps, seeds, splits)
    rx0, rconf = ref.remask_confidence(logits, temps, seeds)
    assert x0.dtype == torch.int64 and conf.dtype == torch.float32
    assert torch.equal(x0, rx0), (x0, rx0)
    # conf error model: the spec in fp64 (exact softmax of the same logits at the same token)
    conf64 = torch.softmax(logits.double(), dim=-1).gather(1, rx0[:, None])[:, 0]
    assert_fa_close(conf, rconf, conf64, dtype, "conf")


@remask_dtypes
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("rows,vocab", [(1, 1), (7, 1000), (4, 5003)], ids=str)
def test_remask_matches_spec(dtype, splits, rows, vocab):
    logits = logits_with_ties(rows, vocab, dtype, seed=vocab)
    temps = torch.tensor((TEMPS * 2)[:rows], device=DEVICE)
    seeds = torch.randint(-2 ** 62, 2 ** 62, (rows,), generator=gen(rows)).to(DEVICE)
    check(logits, temps, seeds, dtype, splits)


def test_remask_full_vocab_sampled_and_greedy():
    """LLaDA's vocab (126,464 = not a multiple of the tile), sampled rows with fp32 and fp64 temperatures."""
    logits = logits_with_ties(2, 126464, torch.float32, seed=5)
    seeds = torch.tensor([123456789, -42], dtype=torch.int64, device=DEVICE)
    for temps, tdtype in (([0.9, 0.0], torch.float32), ([0.3, 1.5], torch.float64)):
        check(logits, torch.tensor(temps, dtype=tdtype, device=DEVICE), seeds, torch.float32, None)


def test_remask_noise_depends_only_on_seed_and_column():
    """A row's draw does not depend on its batch neighbours or on the vocab split."""
    logits = logits_with_ties(5, 2000, torch.float32, seed=6)
    temps = torch.full((5,), 1.0, device=DEVICE)
    seeds = torch.arange(5, dtype=torch.int64, device=DEVICE) * 977
    x0_all, _ = tri.remask_fwd(logits, temps, seeds, 2)
    x0_one, _ = tri.remask_fwd(logits[3:4], temps[3:4], seeds[3:4], 1)
    assert x0_all[3] == x0_one[0]


def test_remask_fp64_uses_spec_and_empty_rows():
    logits = logits_with_ties(3, 50, torch.float64, seed=7)
    temps, seeds = torch.tensor([0.0, 1.0, 0.5], device=DEVICE), torch.arange(3, device=DEVICE)
    for a, b in zip(tri.remask_confidence(logits, temps, seeds), ref.remask_confidence(logits, temps, seeds)):
        assert torch.equal(a, b)
    x0, conf = tri.remask_confidence(torch.empty(0, 10, device=DEVICE), temps[:0], seeds[:0])
    assert x0.shape == (0,) and conf.shape == (0,)


# ---------------------------------------------------------------------------------------------- select
def brute_force(conf, cand, k, thr):
    """Plain-Python statement of the rule, to check the torch specification itself."""
    out = torch.zeros_like(cand)
    for b in range(conf.shape[0]):
        order = sorted((j for j in range(conf.shape[1]) if cand[b, j]), key=lambda j: (-conf[b, j].item(), j))
        pick = [j for j in order if conf[b, j] >= thr[b]] + order[:1] if thr[b] > 0 else order[:int(k[b])]
        out[b, pick] = True
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("width", [1, 32, 37, 64])
def test_select_commits(dtype, width):
    g = gen(width)
    batch = 24
    conf = (torch.randint(0, 6, (batch, width), generator=g) / 5).to(dtype)  # many ties
    conf[0] = float("-inf")
    cand = torch.rand(batch, width, generator=g) < 0.6
    cand[1] = False  # no candidate at all
    cand[2] = True
    k = torch.randint(0, width + 3, (batch,), generator=g, dtype=torch.int32)  # incl. 0 and > #candidates
    thr = torch.where(torch.rand(batch, generator=g) < 0.5, torch.rand(batch, generator=g), torch.zeros(batch))
    thr[3] = 2.0  # nothing passes: only the best candidate commits
    expected = brute_force(conf.float(), cand, k, thr)
    conf, cand, k, thr = (t.to(DEVICE) for t in (conf, cand, k, thr))
    spec = sel_ref.select_commits(conf, cand, k, thr)
    assert torch.equal(spec.cpu(), expected)
    got = sel_tri.select_commits(conf, cand, k, thr)
    assert got.dtype == torch.bool and torch.equal(got, spec)
    got64 = sel_tri.select_commits(conf, cand, k, thr.double())
    assert torch.equal(got64, sel_ref.select_commits(conf, cand, k, thr.double()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("ranks", [2, 4, 6])
def test_vocab_parallel_remask_equals_whole_rows(dtype, ranks):
    """Tensor parallelism's remask: every rank reduces its vocabulary slice (remask_partial), the slices combine
    (remask_combine) into the whole rows' tokens exactly and their confidences (rounded as remask_confidence);
    the tie of row 1 straddles two slices, row 2 has −inf entries, greedy and sampled rows mixed."""
    vocab = 96
    logits = logits_with_ties(len(TEMPS), vocab, dtype, seed=3)
    temps = torch.tensor(TEMPS)
    seeds = torch.arange(len(TEMPS), dtype=torch.int64) * 0x9E3779B9 + 11
    x0, conf = ref.remask_confidence(logits.clone(), temps, seeds)
    width = vocab // ranks
    parts = torch.stack([ref.remask_partial(logits[:, r * width:(r + 1) * width], temps, seeds, r * width)
                         for r in range(ranks)])  # [R, M, 4]
    got_x0, got_conf = ref.remask_combine(parts, dtype)
    assert torch.equal(got_x0, x0)
    assert got_conf.dtype == conf.dtype
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got_conf, conf, rtol=tol, atol=0)
