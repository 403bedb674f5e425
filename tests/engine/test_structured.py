"""Structured outputs in the engine: every constrained answer is valid (50 JSON schemas, regex, choice) on both
embedded models and a random-weight checkpoint, both presets, in batches mixed with unconstrained requests that
come out exactly as when run alone; forced tokens cost no forward; seeded sampling stays reproducible; invalid
constraints are refused with the problem named; unconstrained steps carry no grammar work."""
from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest
import torch

from benchmarks.reference.family_checkpoints import write_family_checkpoint
from tests.structured_cases import CHOICES, EMBEDDED, PROMPT, REGEXES, json_schemas, write_random_ckpt
from unmask import LLM, DiffusionParams
from unmask.server.engine import commit_constrained, structured
from unmask.server.engine.client import RequestRejected
from unmask.server.engine.constraint import StructuredOutputs

FREE_PROMPTS = ([{"role": "user", "content": "What is 60 + 78?"}], [{"role": "user", "content": "Uppercase: n"}],
                [{"role": "user", "content": "Put in order: 9 2 5"}])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    random_ckpt = write_random_ckpt(tmp_path_factory.mktemp("structured") / "random")
    out = {name: LLM(name) for name in EMBEDDED}
    out["random"] = LLM(str(random_ckpt), device="cpu", dtype="float32")
    return out


def _check_valid(cases, outs):
    for (kind, spec), o in zip(cases, outs):
        assert o.finish_reason == "stop", (kind, spec, o.text)
        if kind == "json":
            jsonschema.validate(json.loads(o.text), spec)
        elif kind == "regex":
            assert re.fullmatch(spec, o.text), (spec, o.text)
        else:
            assert o.text in spec, (spec, o.text)


@pytest.mark.parametrize("preset", ["exact", "fast"])
@pytest.mark.parametrize("model", [*EMBEDDED, "random"])
def test_every_constrained_answer_is_valid_in_a_mixed_batch(models, model, preset):
    llm = models[model]
    cases = [("json", s) for s, _ in json_schemas()] + [("regex", r) for r in REGEXES] + \
            [("choice", c) for c in CHOICES]
    bounds = [b + 1 for _, b in json_schemas()] + [24] * (len(REGEXES) + len(CHOICES))
    steps = (lambda n: max(1, n // 4)) if preset == "exact" else (lambda n: None)  # exact: k = 4 per step
    params = [DiffusionParams(max_tokens=n, steps=steps(n), preset=preset, structured_outputs={k: s})
              for (k, s), n in zip(cases, bounds)]
    free = DiffusionParams(max_tokens=32, preset=preset)
    prompts = [PROMPT] * len(cases)
    for i, p in enumerate(FREE_PROMPTS):  # unconstrained requests spread through the batch
        prompts.insert(1 + 20 * i, p)
        params.insert(1 + 20 * i, free)
    outs = llm.generate(prompts, params)
    free_idx = [1 + 20 * i for i in range(len(FREE_PROMPTS))]
    _check_valid(cases, [o for i, o in enumerate(outs) if i not in free_idx])
    alone = llm.generate(list(FREE_PROMPTS), free)
    assert [outs[i].token_ids for i in free_idx] == [o.token_ids for o in alone]


def test_forced_answers_need_no_forward(models):
    llm = models["random"]
    outs = llm.generate([PROMPT] * 2, [
        DiffusionParams(max_tokens=16, structured_outputs={"choice": ["maybe so"]}),
        DiffusionParams(max_tokens=40, preset="fast", structured_outputs={"json": {
            "type": "object", "properties": {"kind": {"const": "point"}, "dims": {"enum": [3]}},
            "required": ["kind", "dims"], "additionalProperties": False}})])
    assert [o.text for o in outs] == ["maybe so", '{"kind":"point","dims":3}']
    assert [o.nfe for o in outs] == [0, 0] and all(o.finish_reason == "stop" for o in outs)


def test_forced_tokens_commit_several_per_forward(models):
    """Keys, quotes and braces are forced: the answer has more tokens than the forwards that produced it."""
    schema = {"type": "object", "properties": {"first": {"type": "integer", "minimum": 0, "maximum": 9},
                                               "second": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["first", "second"], "additionalProperties": False}
    o = models["random"].generate(PROMPT, DiffusionParams(max_tokens=32, structured_outputs={"json": schema}))[0]
    jsonschema.validate(json.loads(o.text), schema)
    assert o.nfe == 2 and len(o.token_ids) > 2 * o.nfe


def test_sampling_with_a_constraint_is_reproducible_and_valid(models):
    llm = models["tiny-llada-instruct"]
    schema, bound = json_schemas()[7]
    base = DiffusionParams(max_tokens=bound + 1, temperature=0.9, seed=5, preset="fast", top_p=0.95,
                           structured_outputs={"json": schema})
    params = [base.for_choice(i) for i in range(4)]  # what n=4 sends
    first = llm.generate([PROMPT] * 4, params)
    again = llm.generate([PROMPT] * 4, params)
    assert [o.token_ids for o in first] == [o.token_ids for o in again]
    _check_valid([("json", schema)] * 4, first)


def test_budget_exhausted_before_the_grammar_ends_is_length(models):
    o = models["random"].generate(PROMPT, DiffusionParams(max_tokens=4, structured_outputs={"regex": "[a-z]{12}"}))[0]
    assert o.finish_reason == "length" and re.fullmatch("[a-z]{1,11}", o.text), o.text


@pytest.mark.parametrize("spec, needle", [({"regex": "(ab"}, "unclosed group"),
                                          ({"json": {"type": "blah"}}, "Invalid type"),
                                          ({"json": {"type": "string", "format": "weird"}}, "Unknown format"),
                                          ({"grammar": "start: foo"}, "foo")])
def test_invalid_constraints_are_refused_naming_the_problem(models, spec, needle):
    with pytest.raises(RequestRejected) as e:
        models["random"].generate(PROMPT, DiffusionParams(max_tokens=8, structured_outputs=spec))
    assert needle in str(e.value) and e.value.param == "structured_outputs"


def test_lenient_schema_ignores_unknown_keywords(models):
    spec = {"json": {"type": "string", "format": "weird", "maxLength": 3}, "strict": False}
    o = models["random"].generate(PROMPT, DiffusionParams(max_tokens=16, structured_outputs=spec))[0]
    assert o.finish_reason == "stop" and len(json.loads(o.text)) <= 3


@pytest.mark.parametrize("fields, needle", [({}, "exactly one"), ({"regex": "a", "choice": ["b"]}, "regex and choice"),
                                            ({"choice": []}, "non-empty"), ({"json": "{"}, "not valid JSON")])
def test_constraint_shape_errors(fields, needle):
    with pytest.raises(ValueError, match=needle):
        StructuredOutputs(**fields)
    with pytest.raises(ValueError, match="ignore_eos"):
        DiffusionParams(max_tokens=4, ignore_eos=True, structured_outputs={"regex": "a"})


def test_equal_schemas_share_one_compiled_grammar_and_the_cache_is_bounded(models):
    comp = structured.GrammarCompiler(models["random"].tokenizer, 960, (953,), cache_size=2)
    a = StructuredOutputs(json={"type": "object", "properties": {"x": {"type": "integer"}}})
    same = StructuredOutputs(json='{"type": "object", "properties": {"x": {"type": "integer"}}}')
    assert a == same and hash(a) == hash(same) and comp.compile(a) is comp.compile(same)
    comp.compile(StructuredOutputs(regex="b"))
    comp.compile(StructuredOutputs(regex="c"))
    assert a not in comp._cache and len(comp._cache) == 2


def test_compile_time_is_bounded(models):
    comp = structured.GrammarCompiler(models["random"].tokenizer, 960, (953,), timeout_s=0.05)
    release = threading.Event()
    comp._compile_pool.submit(release.wait)  # the worker is busy: the compile cannot finish in time
    try:
        with pytest.raises(structured.GrammarError, match="took over"):
            comp.compile(StructuredOutputs(regex="x+"))
    finally:
        release.set()


def test_unconstrained_requests_carry_no_grammar_work(models, monkeypatch):
    llm = models["random"]
    llm.engine.__dict__.pop("grammars", None)
    monkeypatch.setattr(structured.GrammarCompiler, "__init__", lambda *a, **k: pytest.fail("compiler built"))
    out = llm.generate(PROMPT, DiffusionParams(max_tokens=8, preset="fast"))[0]
    assert out.finish_reason in ("stop", "length") and "grammars" not in llm.engine.__dict__


def test_apply_bitmask_sets_exactly_the_disallowed_tokens_to_minus_inf():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 70, generator=g)  # [M, V], V not a multiple of 32
    allowed = torch.rand(2, 70, generator=g) < 0.3  # [G, V]
    words = torch.zeros(2, 3, dtype=torch.int64)
    for t in range(70):
        words[:, t // 32] |= allowed[:, t].long() << (t % 32)
    bitmask = torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)  # [G, 3] as int32 words
    rows = torch.tensor([1, 4])
    out = logits.clone()
    structured.apply_bitmask(out, rows, bitmask)
    expect = logits.clone()
    expect[rows] = torch.where(allowed, logits[rows], float("-inf"))
    assert torch.equal(out, expect)


@pytest.mark.parametrize("rule, conf, k, expect", [
    (dict(threshold=0.9), [0.1, 0.95, 0.91, 0.5, 0.99], 1, 3),  # the leftmost always, then while conf ≥ τ
    (dict(threshold=0.9), [0.1, 0.2, 0.99], 1, 1),
    (dict(factor=1.0), [0.2, 0.7, 0.8, 0.7], 1, 3),  # i-th of the run needs conf ≥ 1 − f/(i+2)
    (dict(), [0.1, 0.2, 0.3, 0.4], 2, 2),  # fixed schedule: the step's k
    (dict(), [0.1, 0.2, 0.3], 0, 1),  # ... at least one
])
def test_run_length_follows_the_presets_rule(rule, conf, k, expect):
    class Seq:
        params = DiffusionParams(max_tokens=8, **rule)
        plan, step_in_block, editing = [k], 0, None

    assert commit_constrained.run_length(Seq, torch.tensor(conf, dtype=torch.float64)) == expect


@pytest.mark.parametrize("family", ["llada2", "dream"])
def test_other_families_get_the_constrained_rule(tmp_path, family):
    """LLaDA2 (aligned blocks, its own commit rule) and Dream (word-level test tokenizer, which the grammar engine
    reads from the tokens' text) decode under the same constraints, both presets."""
    llm = LLM(str(write_family_checkpoint(tmp_path / family, family, seed=5)), device="cpu", dtype="float32")
    specs = [{"regex": "[A-Z]{2,4}"}, {"choice": ["YES", "NO"]}, {"regex": "[0-9]{3}-[0-9]{2}"},
             {"grammar": 'start: "A" x x? "Z"\nx: "B" | "C"'}]
    for preset in ("exact", "fast"):
        outs = llm.generate(["HELLO"] * len(specs), [DiffusionParams(max_tokens=16, preset=preset, structured_outputs=s)
                                                     for s in specs])
        assert [o.finish_reason for o in outs] == ["stop"] * 4
        texts = [o.text for o in outs]
        assert re.fullmatch("[A-Z]{2,4}", texts[0]) and texts[1] in ("YES", "NO"), texts
        assert re.fullmatch("[0-9]{3}-[0-9]{2}", texts[2]) and re.fullmatch("A[BC]{1,2}Z", texts[3]), texts


def test_masks_are_filled_on_the_worker_while_the_forward_runs(models, monkeypatch):
    """The step's mask job starts when its inputs are packed, before the forward, on the mask thread; the logits
    stage collects it after the forward."""
    llm, events = models["random"], []
    fill, forward, apply = structured.GrammarCompiler._fill, type(llm.engine.model).forward, structured.MaskJob.apply
    monkeypatch.setattr(structured.GrammarCompiler, "start_masks",
                        lambda self, states: (events.append("start"), self._mask_pool.submit(self._fill, states))[1])
    monkeypatch.setattr(structured.GrammarCompiler, "_fill",
                        lambda self, states: (events.append(threading.current_thread().name), fill(self, states))[1])
    monkeypatch.setattr(type(llm.engine.model), "forward",
                        lambda self, *a, **k: (events.append("forward"), forward(self, *a, **k))[1])
    monkeypatch.setattr(structured.MaskJob, "apply", lambda self, logits: (events.append("apply"), apply(self, logits))[1])
    llm.generate(PROMPT, DiffusionParams(max_tokens=8, structured_outputs={"regex": "[a-z]{4}"}))
    first = events[:events.index("apply") + 1]
    assert first[0] == "start" and first.index("start") < first.index("forward") < first.index("apply")
    assert "unmask-grammar-mask_0" in first


def test_a_refused_commit_ends_that_answer_instead_of_failing_the_step(models):
    comp = structured.GrammarCompiler(models["random"].tokenizer, 960, (953,))
    state = comp.state(StructuredOutputs(regex="[a-z]{3}"))
    state.consume(models["random"].tokenizer.encode("7"))  # not allowed: the matcher stays in its error state
    assert state.ended() and state.forced() == [953]
