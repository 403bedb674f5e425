"""The load generator's pure parts: arrival times, goodput parsing, SSE timing, metric aggregation, and the
sweep's table and plots."""
from __future__ import annotations

import pytest

from benchmarks.load import markdown, stats
from benchmarks.load.datasets import SampleRequest
from benchmarks.load.request import RequestOutput, RequestSpec, _Reader, build_body
from benchmarks.serving import arrival_times


def test_arrival_times():
    assert arrival_times(4, float("inf"), 1.0, 0) == [0.0] * 4
    t = arrival_times(200, 10.0, 1.0, 0)
    assert t[0] == 0.0 and t == sorted(t) and t[-1] < 20.0
    gaps = [b - a for a, b in zip(t, t[1:])]
    assert 0.05 < sum(gaps) / len(gaps) < 0.15
    assert arrival_times(50, 10.0, 0.5, 1) != arrival_times(50, 10.0, 0.5, 2)


def test_goodput_parsing():
    assert stats.parse_goodput(["ttft:500", "e2el:2000"]) == {"ttft": 500.0, "e2el": 2000.0}
    assert stats.parse_goodput(None) is None
    for bad in ("itl:5", "ttft", "ttft:-1"):
        with pytest.raises(ValueError):
            stats.parse_goodput([bad])


def _feed(reader: _Reader, text: str, times) -> None:
    for line, now in zip(text.split("\n"), times):
        reader.line(line, now)


def test_reader_times_chunks_and_skips_denoise_events():
    out = RequestOutput(start=0.0)
    reader = _Reader(out)
    stream = ('event: denoise\ndata: {"choices": [], "denoise": {"step": 1}}\n\n: ping\n\n'
              'data: {"choices": [{"index": 0, "text": "ab"}], "usage": null}\n\n'
              'data: {"choices": [{"index": 0, "text": "c", "finish_reason": "length"}]}\n\n'
              'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "nfe": 4, '
              '"tokens_per_forward": 0.75}}\n\ndata: [DONE]\n\n')
    _feed(reader, stream, [0.1 * i for i in range(1, 100)])
    reader.finish(None)
    assert out.success and out.generated_text == "abc" and out.finish_reason == "length"
    assert out.ttft == pytest.approx(0.7) and out.itl == [pytest.approx(0.2)] and out.latency == pytest.approx(0.9)
    assert (out.output_tokens, out.prompt_len, out.nfe, out.tpf) == (3, 5, 4, 0.75)


def test_reader_raises_on_error_event():
    reader = _Reader(RequestOutput())
    with pytest.raises(RuntimeError, match="boom"):
        _feed(reader, 'data: {"error": {"message": "boom"}}\n', [1.0, 1.0])


def test_body_shapes():
    req = SampleRequest("hi", 2, 7)
    extra = {"preset": "fast", "stream_options": {"denoise": True}}
    chat = build_body(RequestSpec("u", "m", True, extra_body=extra), req)
    assert chat["messages"][0]["content"] == "hi" and chat["max_completion_tokens"] == 7 and chat["preset"] == "fast"
    assert chat["stream_options"] == {"include_usage": True, "denoise": True}
    comp = build_body(RequestSpec("u", "m", False, ignore_eos=True), req)
    assert comp["prompt"] == "hi" and comp["max_tokens"] == 7 and comp["ignore_eos"] is True


def _out(start, ttft, itl, tokens, ok=True):
    times = [ttft]
    for gap in itl:
        times.append(times[-1] + gap)
    return RequestOutput(success=ok, error="" if ok else "HTTP 500", start=start, ttft=ttft, itl=list(itl),
                         latency=times[-1] if ok else 0.0, chunk_times=times if ok else [], output_tokens=tokens,
                         prompt_len=4)


def test_compute_matches_definitions():
    outs = [_out(0.0, 0.1, [0.2], 5), _out(0.0, 0.3, [0.1, 0.1], 3), _out(0.5, 0.0, [], 0, ok=False)]
    samples = [SampleRequest("p", 4, 8, answer="x"), SampleRequest("p", 4, 8), SampleRequest("p", 4, 8)]
    res = stats.compute(samples, outs, duration=2.0, t0=0.0, percentiles=[50, 99], slos_ms={"ttft": 200})
    assert (res["completed"], res["failed"], res["total_output_tokens"], res["total_input_tokens"]) == (2, 1, 8, 8)
    assert res["request_throughput"] == 1.0 and res["request_goodput"] == 0.5
    assert res["mean_ttft_ms"] == pytest.approx(200) and res["median_e2el_ms"] == pytest.approx(400)
    assert res["mean_tpot_ms"] == pytest.approx((0.2 / 4 + 0.2 / 2) / 2 * 1000)
    assert res["mean_itl_ms"] == pytest.approx(400 / 3) and res["max_concurrent_requests"] == 2
    assert res["mean_tokens_per_chunk"] == pytest.approx(8 / 5) and res["num_checked"] == 1
    assert res["errors"] == ["", "", "HTTP 500"] and res["mean_nfe"] is None


def _row(preset, conc, tput):
    row = {k: 1.0 for k in ("request_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "median_e2el_ms",
                            "p90_e2el_ms", "p99_e2el_ms", "mean_tokens_per_chunk", "mean_nfe", "mean_tpf")}
    return {**row, "preset": preset, "concurrency": conc, "output_throughput": tput, "completed": 4, "failed": 0,
            "server_mean_batch_size": None, "accuracy": 0.5}


def test_sweep_table_and_plots(tmp_path):
    rows = [_row(p, c, 10.0 * c) for p in ("fast", "exact") for c in (1, 4)]
    lines = markdown.table(rows).splitlines()
    assert len(lines) == 2 + 4 and lines[2].startswith("| exact | 1 | 4/0 |") and "| – | 50% |" in lines[2]
    from benchmarks.load import plots  # matplotlib is a dev dependency
    for draw in (plots.throughput_plot, plots.latency_plot):
        path = draw(rows, tmp_path / f"{draw.__name__}.png", "test")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
