"""Scheduler unit tests with a scripted fake runner (no model): admission, budgets, abort at every phase,
memory freed, fairness."""
import pytest
import torch

from unmask import DiffusionParams
from unmask.server.config import SchedulerConfig
from unmask.server.engine.batch import StepResult
from unmask.server.engine.commit_counts import step_k
from unmask.server.engine.commit_policy import candidates
from unmask.server.engine.kv_cache import KVCacheManager
from unmask.server.engine.scheduler import Scheduler
from unmask.server.engine.client import Request
from unmask.server.engine.sequence import Sequence, SeqStatus, StepKind
from unmask.server.config import from_dict
from tests.helpers import dense_config

MASK, EOS = 95, 94
CFG = from_dict(dense_config(), {})


class FakeRunner:
    """Commits the k left-most candidates with token 7 (or EOS at positions listed in ``eos_at``)."""

    def __init__(self, eos_at=None):
        self.eos_at = eos_at or {}
        self.calls = []

    def run(self, batch):
        self.calls.append([s.request_id for s in batch.seqs])
        commits = []
        for seq in batch.seqs:
            cand = candidates(seq).tolist()
            k = len(cand) if seq.params.parallel else step_k(seq)
            pos = cand[:k]
            toks = [EOS if p - seq.prompt_len in self.eos_at.get(seq.request_id, ()) else 7 for p in pos]
            commits.append((pos, toks))
        return StepResult(commits=commits, ran_forward=[True] * len(batch.seqs))


def seq(rid, prompt_len=4, **kw):
    p = DiffusionParams(**{"max_tokens": 8, "block_length": 4, "steps": 8, **kw})
    return Sequence(Request(rid, tuple(range(1, prompt_len + 1)), p), MASK, (EOS,), seed=1)


def drive(sched, runner, max_iters=1000):
    outs = []
    for _ in range(max_iters):
        batch = sched.schedule()
        if batch is None:
            break
        outs += sched.update(batch, runner.run(batch))
    return outs


def kv(pages):
    bpp = 2 * CFG.num_layers * 16 * CFG.num_kv_heads * CFG.head_dim * 4
    return KVCacheManager(CFG, pages * bpp, "cpu", torch.float32)


def test_runs_to_length_and_emits_only_appends():
    sched, runner = Scheduler(SchedulerConfig(), None), FakeRunner()
    sched.add(seq("a"))
    outs = drive(sched, runner)
    assert [len(o.new_token_ids) for o in outs] == [0, 2, 0, 2, 0, 2, 0, 2][:len(outs)] or sum(
        len(o.new_token_ids) for o in outs) == 8
    assert outs[-1].finished and outs[-1].finish_reason == "length" and outs[-1].num_output_tokens == 8
    assert not sched.has_unfinished()


def test_eos_in_final_prefix_stops_early():
    sched, runner = Scheduler(SchedulerConfig(), None), FakeRunner(eos_at={"a": {2}})
    sched.add(seq("a"))
    outs = drive(sched, runner)
    assert outs[-1].finish_reason == "stop" and outs[-1].num_output_tokens == 2
    assert sum(len(o.new_token_ids) for o in outs) == 2
    assert len(runner.calls) < 8  # stopped before the second block


def test_early_stop_off_runs_every_block():
    sched, runner = Scheduler(SchedulerConfig(), None), FakeRunner(eos_at={"a": {2}})
    sched.add(seq("a", early_stop=False))
    outs = drive(sched, runner)
    assert outs[-1].finish_reason == "stop" and len(runner.calls) == 8 and outs[-1].num_output_tokens == 2


def test_max_num_seqs_bounds_admission_and_fifo_order():
    sched, runner = Scheduler(SchedulerConfig(max_num_seqs=2), None), FakeRunner()
    for r in "abcd":
        sched.add(seq(r))
    batch = sched.schedule()
    assert [s.request_id for s in batch.seqs] == ["a", "b"] and [s.request_id for s in sched.waiting] == ["c", "d"]
    drive(sched, runner)
    firsts = {}
    for i, call in enumerate(runner.calls):
        for r in call:
            firsts.setdefault(r, i)
    assert firsts["c"] > firsts["a"] and firsts["d"] >= firsts["c"] and not sched.has_unfinished()


def test_token_budget_bounds_a_step_and_no_one_starves():
    # each canvas is 12 tokens; a budget of 30 fits two per iteration
    sched, runner = Scheduler(SchedulerConfig(max_num_batched_tokens=30), None), FakeRunner()
    for r in "abcde":
        sched.add(seq(r))
    drive(sched, runner)
    assert all(len(c) <= 2 for c in runner.calls)
    counts = {r: sum(r in c for c in runner.calls) for r in "abcde"}
    assert set(counts.values()) == {8} and not sched.has_unfinished()


def test_no_request_starves_when_running_set_exceeds_budget():
    # cached steps are cheaper than refreshes, so more sequences run than one refresh iteration can take
    cache = kv(pages=64)
    sched, runner = Scheduler(SchedulerConfig(max_num_batched_tokens=28), cache), FakeRunner()
    sched.add(seq("long", max_tokens=32, block_length=4, steps=32, cache="prefix"))
    for r in "abcdef":
        sched.add(seq(r, cache="prefix"))
    drive(sched, runner)
    for r in ["long", *"abcdef"]:
        its = [i for i, c in enumerate(runner.calls) if r in c]
        gaps = [b - a for a, b in zip(its, its[1:])]
        assert max(gaps, default=1) <= 4, (r, gaps)
    last = {r: max(i for i, c in enumerate(runner.calls) if r in c) for r in ["long", *"abcdef"]}
    assert all(last[r] < last["long"] for r in "abcdef")  # short requests are not stuck behind the long one
    assert cache.num_free == 64


def test_oversized_sequence_still_runs_alone():
    sched, runner = Scheduler(SchedulerConfig(max_num_batched_tokens=5), None), FakeRunner()
    sched.add(seq("big"))
    sched.add(seq("big2"))
    drive(sched, runner)
    assert all(len(c) == 1 for c in runner.calls) and not sched.has_unfinished()


def test_cache_admission_waits_for_pages_and_frees_them():
    cache = kv(pages=2)  # 32 tokens: one 24-token canvas (2 pages) at a time
    sched, runner = Scheduler(SchedulerConfig(), cache), FakeRunner()
    sched.add(seq("a", prompt_len=16, cache="prefix"))
    sched.add(seq("b", prompt_len=16, cache="prefix"))
    batch = sched.schedule()
    assert [s.request_id for s in batch.seqs] == ["a"] and cache.num_free == 0
    sched.update(batch, runner.run(batch))
    drive(sched, runner)
    assert cache.num_free == 2 and not sched.has_unfinished()


def test_request_that_can_never_fit_is_rejected():
    sched = Scheduler(SchedulerConfig(), kv(pages=1))
    with pytest.raises(ValueError, match="cache holds 16 tokens"):
        sched.add(seq("a", prompt_len=16, cache="dual"))
    sched.add(seq("b", prompt_len=16))  # exact mode needs no pages


@pytest.mark.parametrize("phase", ["waiting", "first_step", "mid_block", "last_step"])
def test_abort_at_every_phase_frees_everything(phase):
    cache = kv(pages=4)
    sched, runner = Scheduler(SchedulerConfig(max_num_seqs=1), cache), FakeRunner()
    sched.add(seq("a", cache="prefix"))
    sched.add(seq("b", cache="prefix"))
    steps = {"waiting": 0, "first_step": 1, "mid_block": 3, "last_step": 7}[phase]
    for _ in range(steps):
        batch = sched.schedule()
        sched.update(batch, runner.run(batch))
    victim = "b" if phase == "waiting" else "a"
    out = sched.abort(victim)
    assert out.finished and out.finish_reason == "abort"
    assert sched.abort(victim) is None  # second abort is a no-op
    drive(sched, runner)
    assert cache.num_free == 4 and not sched.has_unfinished()


def test_step_kinds_for_cached_sequences():
    cache = kv(pages=4)
    sched, runner = Scheduler(SchedulerConfig(), cache), FakeRunner()
    sched.add(seq("p", cache="prefix"))
    sched.add(seq("e"))
    kinds = []
    while True:
        batch = sched.schedule()
        if batch is None:
            break
        kinds.append({s.request_id: k for s, k in zip(batch.seqs, batch.kinds)})
        sched.update(batch, runner.run(batch))
    assert all(k.get("e", StepKind.REFRESH) is StepKind.REFRESH for k in kinds)
    p = [k["p"] for k in kinds if "p" in k]
    assert p == [StepKind.REFRESH, StepKind.BLOCK, StepKind.BLOCK, StepKind.BLOCK] * 2


def test_fail_finishes_only_that_batch():
    sched, runner = Scheduler(SchedulerConfig(max_num_seqs=1), None), FakeRunner()
    sched.add(seq("a"))
    sched.add(seq("b"))
    batch = sched.schedule()
    outs = sched.fail(batch, "RuntimeError: boom")
    assert [(o.request_id, o.finish_reason, o.error) for o in outs] == [("a", "error", "RuntimeError: boom")]
    rest = drive(sched, runner)
    assert rest[-1].request_id == "b" and rest[-1].finish_reason == "length"


def test_status_transitions():
    sched, runner = Scheduler(SchedulerConfig(), None), FakeRunner()
    s = seq("a")
    sched.add(s)
    assert s.status is SeqStatus.WAITING
    batch = sched.schedule()
    assert s.status is SeqStatus.RUNNING
    sched.update(batch, runner.run(batch))
    drive(sched, runner)
    assert s.status is SeqStatus.FINISHED
