"""The opt-in denoise stream: one ``event: denoise`` per engine step with the canvas, masks and block."""
from __future__ import annotations

from unmask.clients.sse import iter_events
from tests.helpers import MASK_ID

BODY = {"prompt": "HELLO", "max_tokens": 12, "block_length": 8, "steps": 8, "stream": True,
        "stream_options": {"denoise": True, "include_usage": True}}


def _events(http, body, route="/v1/completions"):
    with http.stream("POST", route, json=body) as r:
        assert r.status_code == 200
        return list(iter_events(r.iter_lines()))


def test_denoise_events(http):
    events = _events(http, BODY)
    assert events[-1].is_done
    steps = [e.json()["denoise"] for e in events if e.event == "denoise"]
    chunks = [e.json() for e in events[:-1] if e.event is None]
    assert steps and all(e.json()["choices"] == [] for e in events if e.event == "denoise")
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    for s in steps:
        assert len(s["token_ids"]) == 16 and s["length"] == 12 and s["mask_token_id"] == MASK_ID
        assert s["masked"] == [i for i, t in enumerate(s["token_ids"]) if t == MASK_ID]
        assert all((t is None) == (i in s["masked"]) for i, t in enumerate(s["tokens"]))
        assert s["block"][1] - s["block"][0] == 8
    masks = [len(s["masked"]) for s in steps]
    assert masks == sorted(masks, reverse=True)  # commits are never undone
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    plain = http.post("/v1/completions", json={k: v for k, v in BODY.items() if k not in ("stream", "stream_options")})
    assert text == plain.json()["choices"][0]["text"]
    usage = chunks[-1]["usage"]
    assert usage["nfe"] == steps[-1]["nfe"] and usage["tokens_per_forward"] > 0


def test_denoise_with_openai_sdk_is_harmless(client):
    """The SDK yields denoise events as chunks with empty choices; ordinary loops skip them."""
    stream = client.completions.create(model="tiny", prompt="HELLO", max_tokens=8, stream=True,
                                       stream_options={"denoise": True})
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text == client.completions.create(model="tiny", prompt="HELLO", max_tokens=8).choices[0].text


def test_denoise_chat_n2(http):
    body = {"messages": [{"role": "user", "content": "HI"}], "max_tokens": 8, "n": 2, "stream": True,
            "stream_options": {"denoise": True}}
    steps = [e.json()["denoise"] for e in _events(http, body, "/v1/chat/completions") if e.event == "denoise"]
    assert {s["index"] for s in steps} == {0, 1}
