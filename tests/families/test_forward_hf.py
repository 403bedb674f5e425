"""LLaDA2 and Dream forwards equal independent float64 implementations of the published modeling code to 1e-6,
on packed batches of different lengths (and, for LLaDA2, different block sizes)."""
import torch

from benchmarks.reference import hf_forward as hf
from unmask.server.models.attention_meta import AttentionMetadata, packed_positions
from unmask.server.models.loader import load_model


def _ours(model, rows: list[torch.Tensor], blocks: list[int] | None):
    lens = [r.numel() for r in rows]
    meta = AttentionMetadata.packed(lens)
    if blocks is not None:
        meta.attn_blocks = torch.tensor(blocks, dtype=torch.int32)
    hidden = model(torch.cat(rows), packed_positions(lens), meta)  # [N, D]
    return model.compute_logits(hidden).split(lens)


def test_llada2_equals_published_semantics(family_ckpts):
    model, cfg = load_model(family_ckpts["llada2"], dtype=torch.float64)
    assert (cfg.attention_pattern, cfg.rotary_dim, cfg.first_k_dense, cfg.num_shared_experts) == ("block_causal", 4, 1, 1)
    ref_cfg, tensors = hf.load_tensors(family_ckpts["llada2"])
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 90, (n,), generator=gen) for n in (13, 8, 21, 5)]
    blocks = [4, 8, 3, 32]
    for got, ids, blk in zip(_ours(model, rows, blocks), rows, blocks):
        want = hf.llada2_logits(ref_cfg, tensors, ids[None], blk)[0]
        assert torch.allclose(got, want, atol=1e-6, rtol=0), (blk, (got - want).abs().max())


def test_block_causal_prefix_is_independent_of_later_blocks(family_ckpts):
    """What makes LLaDA2's prefix cache exact: changing later blocks leaves earlier blocks' logits unchanged."""
    model, _ = load_model(family_ckpts["llada2"], dtype=torch.float64)
    a = torch.randint(0, 90, (16,), generator=torch.Generator().manual_seed(1))
    b = a.clone()
    b[8:] = 95
    (la,), (lb,) = _ours(model, [a], [4]), _ours(model, [b], [4])
    assert torch.equal(la[:8], lb[:8]) and not torch.allclose(la[8:], lb[8:])


def test_dream_equals_published_semantics(family_ckpts):
    model, cfg = load_model(family_ckpts["dream"], dtype=torch.float64)
    assert cfg.num_kv_heads == 2 and cfg.qkv_bias and cfg.logits_shift
    ref_cfg, tensors = hf.load_tensors(family_ckpts["dream"])
    gen = torch.Generator().manual_seed(2)
    rows = [torch.randint(0, 90, (n,), generator=gen) for n in (11, 1, 17)]
    for got, ids in zip(_ours(model, rows, None), rows):
        want = hf.dream_logits(ref_cfg, tensors, ids[None])[0]
        assert torch.allclose(got, want, atol=1e-6, rtol=0), (got - want).abs().max()


def test_out_rows_are_the_full_forwards_rows(family_ckpts):
    """LLaDA2 (block-causal) and Dream (whose row i is the state of i - 1): the wanted rows alone equal the full
    forward's rows, including each sequence's first row (Dream keeps its own there)."""
    gen = torch.Generator().manual_seed(2)
    for family, blocks in (("llada2", [4, 8]), ("dream", None)):
        model, _ = load_model(family_ckpts[family], dtype=torch.float64)
        meta = AttentionMetadata.packed([6, 11])
        if blocks is not None:
            meta.attn_blocks = torch.tensor(blocks, dtype=torch.int32)
        args = (torch.randint(0, 90, (17,), generator=gen), packed_positions([6, 11]), meta)
        full = model(*args)  # [17, D]
        for rows in ([0, 6, 16], [7, 3, 3], []):
            got = model(*args, torch.tensor(rows, dtype=torch.int64))
            assert got.shape == (len(rows), full.shape[1]), family
            assert not rows or (got - full[rows]).abs().max().item() < 1e-12, (family, rows)
