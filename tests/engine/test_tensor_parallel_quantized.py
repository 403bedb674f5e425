"""Quantized weights under tensor and expert parallelism on CPU (gloo, float32): load-time fp8 / int8 / int4 and
compressed-tensors checkpoints of the dense, MoE and LLaDA2 families split over 2 ranks.

- Every quantized parameter of every rank is, bit for bit, its slice of the one-device quantized weight (data and
  scales, by the split rules of ``parallel.py``): column-parallel rows quantized per row, row-parallel columns with
  the whole rows' absmax (one all-reduce(MAX) in the process group, or the other ranks' slices read in turn
  without one) and int4 groups of the full K, whole experts under expert parallelism.
- Logits equal the one-device quantized logits within float32 rounding: not bit for bit, since each row-parallel
  layer sums its ranks' partial products in an all-reduce, a different summation order than one GEMM over all K;
  exact-preset generations at temperature 0 are token-identical (``LLM(..., quantization=, tensor_parallel_size=2)``,
  the path ``unmask serve -tp 2 --quantization`` takes).
- An int4 row-parallel split that cuts a quantization group is refused with an error naming the tensor, K, N and G
  (every rank raises it at the same tensor; int4 loads run no collective), and no rank is left behind; packed words
  split mid-word are cut exactly.
- Each rank holds half of the quantized model plus what is replicated (norms, routers, per-channel scales of
  row-parallel layers)."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from safetensors.torch import save_file

from benchmarks.reference.family_checkpoints import write_family_checkpoint
from tests.engine.test_tensor_parallel import KV, PROMPTS, _relative_gap
from tests.helpers import write_checkpoint
from tests.unit.test_quantize import FIXTURES
from unmask import LLM, DiffusionParams
from unmask.kernels.quant import QuantizedWeight
from unmask.server.config import UnsupportedConfigError
from unmask.server.models import compressed
from unmask.server.models import quantize as Q
from unmask.server.models.loader import _Reader, load_model
from unmask.server.models.parallel import EXPERT_STACKS, TensorParallel, init_group
from unmask.server.models.resolve import ASSETS

# (checkpoint, load_model keywords, expert parallel): the shards every rank loads in one spawned 2-rank group
JOBS = {**{f"{fam}-{fmt}{'-ep' if ep else ''}": (fam, {"quantization": fmt, "quantize_lm_head": True}, ep)
           for fam, ep in (("dense", False), ("moe", False), ("moe", True)) for fmt in ("fp8", "int8", "int4")},
        "llada2-int8": ("llada2", {"quantization": "int8"}, False),
        "llada2-int4-ep": ("llada2", {"quantization": "int4", "quantize_lm_head": True}, True),
        **{f"compressed-{name}": (name, {}, False) for name in ("fp8_dynamic", "w8a16", "w4a16")},
        "compressed-moe-w4a16": ("moe_w4a16", {}, False), "compressed-moe-w4a16-ep": ("moe_w4a16", {}, True)}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """fp8 codes as their raw bytes (compared and saved bit for bit); other tensors as they are."""
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def _shard_record(model) -> dict:
    """What a test needs of a loaded shard, picklable: every QuantizedWeight and the resident weight bytes."""
    weights = Q.quantized_weights(model)
    return {"weights": {n: (_bits(w.data), w.scales, w.fmt, w.group_size) for n, w in weights.items()},
            "bytes": Q.weight_bytes(model)}


def _load_shards(rank: int, size: int, init: str, jobs: dict, out: str) -> None:
    """A spawned rank: join the gloo group, load every job's shard (the all-reduce path), save its record."""
    torch.set_num_threads(1)
    init_group(rank, size, init, torch.device("cpu"), 120.0)
    for key, (path, kwargs, ep) in jobs.items():
        model, _ = load_model(path, "cpu", torch.float32, tp=TensorParallel(rank, size, ep), **kwargs)
        torch.save(_shard_record(model), Path(out) / f"{key}.{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("tpq")
    return {"dense": write_checkpoint(root / "dense", "dense", seed=11, d=256, inter=256),
           "moe": write_checkpoint(root / "moe", "moe", seed=12, d=256, inter=256, experts=4, shards=2),
           "llada2": write_family_checkpoint(root / "llada2", "llada2", seed=13, d=256, layers=2, head_dim=64,
                                             experts=4, n_group=2, topk_group=1, moe_inter=256, inter=256),
           "misaligned": write_checkpoint(root / "misaligned", "dense", seed=14, d=64, inter=128),
           **{name: FIXTURES / name for name in ("fp8_dynamic", "w8a16", "w4a16", "moe_w4a16")}}


@pytest.fixture(scope="module")
def shards(ckpts, tmp_path_factory):
    """JOBS key -> [rank 0's record, rank 1's], loaded by 2 spawned ranks in a gloo group."""
    out = tmp_path_factory.mktemp("tpq_shards")
    jobs = {key: (str(ckpts[c]), kw, ep) for key, (c, kw, ep) in JOBS.items()}
    torch_mp.start_processes(_load_shards, args=(2, f"file://{out / 'store'}", jobs, str(out)), nprocs=2,
                        start_method="spawn")
    return {key: [torch.load(out / f"{key}.{r}.pt") for r in range(2)] for key in jobs}


def _one_device(ckpts, key: str):
    name, kwargs, _ = JOBS[key]
    return load_model(ckpts[name], "cpu", torch.float32, **kwargs)[0]


def _expected_slice(w: QuantizedWeight, ours: str, one, tp: TensorParallel) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``tp.rank``'s slice (data bytes, scales) of the one-device weight ``w`` of parameter ``ours``."""
    cfg, data, scales = one.cfg, _bits(w.data), w.scales
    leaf = ours.split(".", 2)[-1]
    if tp.expert_parallel and leaf in EXPERT_STACKS:
        lo, hi = tp.expert_range(cfg)
        return data[lo:hi], scales[lo:hi]
    dim = tp.split_dim(ours)
    if dim is None:
        return data, scales
    if dim == 1:  # K/N columns (int4: K/2N bytes of nibble pairs); per-channel scales [.., N, 1] are replicated
        lo, hi = tp.chunk(data.shape[-1], ours)
        glo, ghi = (0, 1) if scales.shape[-1] == 1 else tp.chunk(scales.shape[-1], ours)
        return data[..., lo:hi], scales[..., glo:ghi]
    fused = one.hf_fused_names(cfg)
    parts = ([rows for _, rows in fused[ours]] if ours in fused else tp.row_parts(ours, cfg)
             or ([w.shape[-2] // 2] * 2 if leaf == "ffn.w_gate_up" else [w.shape[-2]]))  # experts: gate, up
    rows, start = [], 0
    for n in parts:  # each part's rows split on their own, as the loader reads them
        lo, hi = tp.chunk(n, ours)
        rows += range(start + lo, start + hi)
        start += n
    idx = torch.tensor(rows)
    return data.index_select(-2, idx), scales.index_select(-2, idx)


def _assert_slices(one, records: list[dict], expert_parallel: bool) -> None:
    """Every rank's quantized weights are exactly its slices of ``one``'s."""
    want = Q.quantized_weights(one)
    assert want
    for rank, rec in enumerate(records):
        tp = TensorParallel(rank, len(records), expert_parallel)
        assert rec["weights"].keys() == want.keys()
        for name, w in want.items():
            data, scales, fmt, group = rec["weights"][name]
            want_data, want_scales = _expected_slice(w, name, one, tp)
            same = fmt == w.fmt and torch.equal(data, want_data) and torch.equal(scales, want_scales)
            assert same, f"rank {rank}: {name} is not its slice of the one-device weight"
            k = data.shape[-1] * (2 if fmt == "int4" else 1)
            assert group == (k if scales.shape[-1] == 1 else w.group_size), (rank, name)  # per channel: its own K


@pytest.mark.parametrize("key", list(JOBS))
def test_each_rank_holds_its_slice_of_the_one_device_quantized_weights(ckpts, shards, key):
    one = _one_device(ckpts, key)
    _assert_slices(one, shards[key], JOBS[key][2])


@pytest.mark.parametrize("key", ["dense-int8", "moe-fp8-ep"])
def test_a_shard_loaded_without_a_process_group_is_the_same(ckpts, shards, key):
    """Outside a process group a rank reads the other ranks' slices of a row-parallel tensor for its absmax."""
    name, kwargs, ep = JOBS[key]
    assert not dist.is_initialized()
    records = [_shard_record(load_model(ckpts[name], "cpu", torch.float32, tp=TensorParallel(r, 2, ep),
                                        **kwargs)[0]) for r in range(2)]
    _assert_slices(_one_device(ckpts, key), records, ep)
    for got, spawned in zip(records, shards[key]):
        assert all(torch.equal(got["weights"][n][0], spawned["weights"][n][0]) for n in got["weights"])


@pytest.mark.parametrize("key", ["dense-int4", "moe-int8", "moe-int4-ep", "llada2-int4-ep", "compressed-w8a16"])
def test_each_rank_holds_half_of_the_quantized_model(ckpts, shards, key):
    """Per rank: half of every split weight, plus the replicated bytes (norms, routers, expert biases and the
    [N, 1] per-channel scales of row-parallel layers, which every rank keeps whole), exactly."""
    one = _one_device(ckpts, key)
    tp = TensorParallel(0, 2, JOBS[key][2])
    replicated = sum(p.numel() * p.element_size() for n, p in one.named_parameters() if tp.split_dim(n) is None)
    replicated += sum(w.scales.numel() * 4 for n, w in Q.quantized_weights(one).items()
                      if tp.split_dim(n) == 1 and w.scales.shape[-1] == 1)
    full = Q.weight_bytes(one)["total"]
    for rec in shards[key]:
        print(f"{key}: one device {full} B, rank {rec['bytes']['total']} B ({rec['bytes']['total'] / full:.3f}), "
              f"replicated {replicated} B")
        assert rec["bytes"]["total"] == (full - replicated) // 2 + replicated
        assert rec["bytes"]["total"] < 0.53 * full


LLM_CASES = [("tiny-llada-instruct", {"quantization": "int8"}, False),
             ("dense", {"quantization": "int4", "quantize_lm_head": True}, False),
             ("moe", {"quantization": "fp8"}, False),
             ("moe", {"quantization": "int4"}, True),
             ("w4a16", {}, False)]


@pytest.mark.parametrize("name,kwargs,expert_parallel", LLM_CASES)
def test_split_quantized_model_matches_one_device(ckpts, name, kwargs, expert_parallel):
    path = str(ASSETS / name if name.startswith("tiny-") else ckpts[name])
    ref = LLM(path, device="cpu", dtype="float32", kv_cache_memory=KV, **kwargs)
    with LLM(path, device="cpu", dtype="float32", kv_cache_memory=KV, tensor_parallel_size=2,
             enable_expert_parallel=expert_parallel, **kwargs) as tp:
        for ids in PROMPTS[:2]:
            a, b = ref.logits(ids), tp.logits(ids)
            assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()))
            assert _relative_gap(a, b) < 1e-5
        p = DiffusionParams(max_tokens=8, block_length=4, steps=8, preset="exact", temperature=0.0, ignore_eos=True)
        want = [o.token_ids for o in ref.generate(PROMPTS, p)]
        assert [o.token_ids for o in tp.generate(PROMPTS, p)] == want


def test_int4_split_inside_a_group_is_refused(ckpts):
    """d = 64: int4 groups of G = 64 over K = 64 (load time), or G = 32 (the W4A16 fixture) over 4 ranks of 16."""
    with pytest.raises(UnsupportedConfigError, match=r"int4 tensor 'model\.transformer\.blocks\.0\.attn_out\.weight':"
                       r" tensor parallel size 2 splits its K = 64 input features into 32 per rank, not a multiple "
                       r"of its quantization group size G = 64"):
        load_model(ckpts["misaligned"], "cpu", torch.float32, "int4", tp=TensorParallel(0, 2))
    with pytest.raises(UnsupportedConfigError, match=r"tensor 'model\.transformer\.blocks\.0\.attn_out\.weight': "
                       r"tensor parallel size 4 splits its K = 64 input features into 16 per rank, not a multiple of "
                       r"its quantization group size G = 32"):
        load_model(ckpts["w4a16"], "cpu", torch.float32, tp=TensorParallel(0, 4))
    with pytest.raises(UnsupportedConfigError, match="not a multiple of its quantization group size G = 64"):
        LLM(str(ckpts["misaligned"]), device="cpu", dtype="float32", kv_cache_memory=KV, tensor_parallel_size=2,
            quantization="int4")
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("bits,k", [(4, 44), (8, 42)])
def test_packed_words_split_mid_word_are_cut_exactly(tmp_path, bits, k):
    """A row-parallel split of pack-quantized channel-scaled weights (8 int4 or 4 int8 fields per int32 word)
    inside a word: each rank unpacks the words spanning its K/2 columns and cuts them at the split (int4 K = 44: 6
    words, the last padded; int8 K = 42); an int4 split into an odd number of columns cannot be repacked."""
    q = torch.randint(-(1 << (bits - 1)), 1 << (bits - 1), (3, k), generator=torch.Generator().manual_seed(bits))
    per = 32 // bits
    fields = torch.nn.functional.pad(q + (1 << (bits - 1)), (0, -k % per)).long().unflatten(1, (-1, per))
    words = (fields << (torch.arange(per) * bits)).sum(-1)  # [3, W] in [0, 2^32)
    name, path = "x.weight", tmp_path / "w.safetensors"
    save_file({f"{name}_packed": (words - (words >= 1 << 31).long() * (1 << 32)).to(torch.int32).contiguous(),
               f"{name}_scale": torch.rand(3, 1), f"{name}_shape": torch.tensor([3, k])}, str(path))
    files = {n: path for n in (f"{name}_packed", f"{name}_scale", f"{name}_shape")}
    scheme = compressed.Scheme("int4" if bits == 4 else "int8", bits, True)
    whole = compressed.CompressedReader(_Reader(files), scheme, torch.device("cpu")).quantized(name)
    assert torch.equal(whole.int_values(), q.to(torch.int8))
    for rank in range(2):
        reader = compressed.CompressedReader(_Reader(files, TensorParallel(rank, 2)), scheme, torch.device("cpu"))
        part = reader.quantized(name, dim=1)
        lo, hi = rank * k // 2, (rank + 1) * k // 2
        assert torch.equal(part.int_values(), q[:, lo:hi].to(torch.int8)) and torch.equal(part.scales, whole.scales)
        assert part.group_size == k // 2
    if bits == 4:
        odd = compressed.CompressedReader(_Reader(files, TensorParallel(0, 4)), scheme, torch.device("cpu"))
        with pytest.raises(UnsupportedConfigError, match="splits its K = 44 input features into 11 per rank, an odd"):
            odd.quantized(name, dim=1)
