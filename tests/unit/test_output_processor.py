"""OutputProcessor (server/engine/output_processor.py): budget cut, incremental detokenization, stop strings
and finish reasons, shared by LLM.generate and the HTTP streams."""
from __future__ import annotations

from tests.unit.steps import step_out
from unmask.server.engine.output_processor import OutputProcessor
from unmask.server.engine.params import DiffusionParams


def ids(tok, text):
    return tok.encode(text)


out = step_out


def proc(tok, max_tokens, stops=(), include_stop=False):
    return OutputProcessor(tok, DiffusionParams(max_tokens=max_tokens, stop=stops,
                                                include_stop_str_in_output=include_stop))


def test_budget_cut_and_length(tok):
    c = proc(tok, 3)
    assert c.process(out(ids(tok, "AB"))).text == "AB" and not c.finished
    assert c.process(out(ids(tok, "CDE"))).text == "C"
    assert c.finished and c.finish_reason == "length" and c.token_ids == ids(tok, "ABC")


def test_engine_finish_reason_passes_through(tok):
    c = proc(tok, 10)
    assert c.process(out(ids(tok, "AB"), True, "stop")).text == "AB" and c.finish_reason == "stop"


def test_stop_string_held_back_across_steps(tok):
    c = proc(tok, 20, ("XYZ",))
    deltas = [c.process(out(ids(tok, text))).text for text in ("ABX", "Y", "ZQQ")]
    assert deltas == ["AB", "", ""] and c.text == "AB"
    assert c.finish_reason == "stop" and c.stop_reason == "XYZ"
    assert c.token_ids == ids(tok, "ABXYZ")  # counted up to where the stop string completed


def test_held_back_text_released_when_no_stop(tok):
    c = proc(tok, 20, ("XYZ",))
    assert c.process(out(ids(tok, "ABX"))).text == "AB"
    assert c.process(out(ids(tok, "Q"))).text == "XQ"
    assert c.process(out(ids(tok, "XY"), True, "length")).text == "XY"  # final: nothing stays held back
    assert c.text == "ABXQXY"


def test_include_stop_and_earliest_stop(tok):
    c = proc(tok, 20, ("CD", "B"), True)
    c.process(out(ids(tok, "ABCD")))
    assert c.text == "AB" and c.stop_reason == "B"


def test_result_and_abort(tok):
    c = proc(tok, 10)
    c.process(out(ids(tok, "AB")))
    c.fail("abort")
    r = c.result()
    assert (r.text, r.finish_reason, r.token_ids, r.nfe) == ("AB", "abort", ids(tok, "AB"), 1)
    later = c.process(out(ids(tok, "CD"), True, "stop"))  # outputs after the finish change nothing
    assert later.text == "" and c.text == "AB" and c.finish_reason == "abort"
