"""Engine-level behaviour: cache plumbing, fault isolation, memory accounting, outputs."""
import pytest
import torch

from unmask import DiffusionParams
from unmask.server.engine.client import Request
from unmask.server.engine.sequence import Sequence, StepKind
from unmask.server.engine.forward_inputs import build_inputs


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("family", ["dense", "moe"])
def test_block_step_on_unchanged_canvas_equals_refresh(llm64, family, mode):
    """With the canvas unchanged since the refresh, a cached block step reproduces the refresh forward on
    the rows it feeds: the cache holds exactly the K/V the full forward used."""
    engine = llm64[family].engine
    model, kv = engine.model, engine.kv
    seqs = []
    for i, plen in enumerate((5, 9)):
        s = Sequence(Request(f"c{family}{mode}{i}", tuple(range(1, plen + 1)),
                             DiffusionParams(max_tokens=12, block_length=4, cache=mode)), 95, (94,), seed=i)
        s.pages = kv.allocate(s.length)
        s.block_idx = 1  # mid-canvas block: prefix and suffix both non-empty
        s.canvas[s.prompt_len:s.prompt_len + 4] = torch.tensor([3, 4, 5, 6])
        seqs.append(s)
    try:
        with torch.inference_mode():
            ref = build_inputs(seqs, [StepKind.REFRESH] * 2, kv, torch.device("cpu"))
            full = model(ref.input_ids, ref.positions, ref.meta)  # writes every layer's cache
            blk = build_inputs(seqs, [StepKind.BLOCK] * 2, kv, torch.device("cpu"))
            part = model(blk.input_ids, blk.positions, blk.meta)
        cu = ref.meta.cu_seqlens_q.tolist()
        start = 0
        for s, lo in zip(seqs, cu):
            a, b = (s.block_start, s.block_end) if mode == "dual" else (s.block_start, s.length)
            want = full[lo + a:lo + b]
            got = part[start:start + (b - a)]
            start += b - a
            assert (got - want).abs().max().item() < 1e-10
    finally:
        for s in seqs:
            kv.free(s.pages)


def test_failing_step_fails_only_its_requests(llm64, monkeypatch):
    engine = llm64["dense"].engine
    p = DiffusionParams(max_tokens=8, block_length=4, logits_eos_inf=True, early_stop=False)
    engine.add_request(Request("ok-1", (1, 2, 3), p))
    calls, run = {"n": 0}, engine.runner.run

    def boom(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected")
        return run(batch)

    monkeypatch.setattr(engine.runner, "run", boom)
    outs = engine.step() + engine.step()  # the second step raises
    engine.add_request(Request("late", (4, 5), p))  # joins after the failing step
    while engine.has_unfinished():
        outs += engine.step()
    final = {o.request_id: o for o in outs if o.finished}
    assert final["ok-1"].finish_reason == "error" and "injected" in final["ok-1"].error
    assert final["late"].finish_reason in ("length", "stop") and final["late"].error is None
    assert engine.stats.failed_steps >= 1


def test_cache_memory_returns_to_idle(llm64):
    llm = llm64["moe"]
    free0 = llm.engine.kv.num_free
    params = [DiffusionParams(max_tokens=16, block_length=8, cache=c, threshold=0.5) for c in ("prefix", "dual")] * 4
    llm.generate([[1, 2, 3 + i] for i in range(8)], params)
    assert llm.engine.kv.num_free == free0 and not llm.engine.has_unfinished()


def test_abort_mid_run_frees_pages(llm64):
    engine = llm64["dense"].engine
    free0 = engine.kv.num_free
    engine.add_request(Request("ab-1", (1, 2, 3), DiffusionParams(max_tokens=32, block_length=8, preset="fast")))
    engine.step()
    assert engine.kv.num_free < free0
    out = engine.abort("ab-1")
    assert out.finish_reason == "abort" and engine.kv.num_free == free0 and not engine.has_unfinished()


def test_duplicate_request_id_rejected(llm64):
    engine = llm64["dense"].engine
    p = DiffusionParams(max_tokens=4, block_length=4)
    engine.add_request(Request("dup", (1, 2), p))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request(Request("dup", (1, 2), p))
    while engine.has_unfinished():
        engine.step()


def test_stop_strings_cut_text(llm64):
    llm = llm64["dense"]
    base = llm.generate([7, 8, 9], DiffusionParams(max_tokens=16, block_length=8, logits_eos_inf=True))[0]
    assert len(base.text) >= 3
    stop = base.text[2]
    out = llm.generate([7, 8, 9], DiffusionParams(max_tokens=16, block_length=8, logits_eos_inf=True,
                                                  stop=(stop,)))[0]
    assert out.text == base.text[:base.text.index(stop)] and out.finish_reason == "stop"


def test_canvas_stream_shows_masks_filling(llm64):
    engine = llm64["dense"].engine
    engine.add_request(Request("cv", (1, 2, 3), DiffusionParams(max_tokens=8, block_length=4, logits_eos_inf=True,
                                                                early_stop=False), stream_canvas=True))
    canvases = []
    while engine.has_unfinished():
        canvases += [o.canvas for o in engine.step()]
    masks = [sum(t == 95 for t in c) for c in canvases]
    assert masks == sorted(masks, reverse=True) and masks[0] == 7 and masks[-1] == 0


def test_static_block_step_path_matches_eager_path(llm64):
    """The CUDA-graph block step (static buffers, padded bucket, all block rows) run eagerly on CPU gives the
    same outputs as the packed eager path, for dual-cache requests mixed with others."""
    from unmask.server.engine.cuda_graph import GraphedBlockStep

    llm = llm64["dense"]
    eng = llm.engine
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10], [11, 12, 13, 14]]
    params = [DiffusionParams(max_tokens=16, block_length=8, cache="dual", threshold=t, temperature=temp, seed=3)
              for t, temp in ((0.3, 0.0), (0.6, 0.0), (0.2, 0.8), (None, 0.0))]
    params.append(DiffusionParams(max_tokens=16, block_length=8, preset="fast"))
    prompts.append([15, 16])
    want = [o.token_ids for o in llm.generate(prompts, params)]
    eng.runner.graphed = GraphedBlockStep(eng.model, eng.kv.layers, eng.kv.pages_for(512), eng.runner.propose_head,
                                          capture=False)
    try:
        got = [o.token_ids for o in llm.generate(prompts, params)]
        assert eng.runner.graphed.graphs, "the static path was not used"
    finally:
        eng.runner.graphed = None
    assert got == want
