"""The web playground in headless Chromium: load ``/``, type a prompt, wait for the answer, check it is the
right one and that the canvas animated, and save screenshots to tests/artifacts/.

With the embedded model the prompt is a held-out task the model answers correctly through the API (so the
test checks the page shows the right answer, not the model's accuracy); with a random test checkpoint it
checks that the page shows the same text as the API. Chromium comes from Debian (installed here if missing).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.browser import Browser, ensure_chromium
from tests.e2e.remote import RemoteServer

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
EMBEDDED = "tiny-llada-instruct"
SETTINGS = {"max-tokens": "16", "block-length": "8", "temperature": "0", "pace": "smooth"}
EMBEDDED_SETTINGS = {**SETTINGS, "max-tokens": "32", "block-length": ""}  # the server's default block
RANDOM_PROMPT = "WHAT IS 2 + 2?"
"""The random test checkpoint answers this with 16 tokens (several canvas states)."""

OBSERVE = """
window.__states = [];
const canvas = document.getElementById('canvas');
new MutationObserver(() => {
  if (canvas.dataset.masked !== undefined) window.__states.push(canvas.dataset.masked + '|' + canvas.textContent);
}).observe(canvas, {childList: true, subtree: true, attributes: true});
for (const [id, value] of Object.entries(arguments[0])) document.getElementById(id).value = value;
"""
DONE = "const s = document.getElementById('status').textContent; return /ready|Error|Stopped/.test(s) && s;"


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """tests/artifacts/, ignored by git through its own .gitignore."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")
    return ARTIFACTS


@pytest.fixture(scope="module")
def chromium():
    found = ensure_chromium()
    if isinstance(found, str):
        pytest.skip(f"no headless Chromium for the playground test: {found}")
    return found


@pytest.fixture(scope="module")
def site(chat_ckpt, tmp_path_factory):
    """(server, embedded?) — the embedded model when shipped, else the random test checkpoint."""
    from unmask.server.models.resolve import builtin_models

    embedded = EMBEDDED in builtin_models()
    log = tmp_path_factory.mktemp("playground") / "server.log"
    with RemoteServer(EMBEDDED if embedded else chat_ckpt, ("--max-num-seqs", "4"), log_path=log) as srv:
        yield srv, embedded


def _body(prompt: str, settings: dict) -> dict:
    body = {"messages": [{"role": "user", "content": prompt}], "max_completion_tokens": int(settings["max-tokens"]),
            "temperature": 0}
    if settings["block-length"]:
        body["block_length"] = int(settings["block-length"])
    return body


def _pick_prompt(srv, embedded: bool, settings: dict) -> tuple[str, str, object]:
    """(prompt, the API's answer, the task example or None). With the embedded model: the first held-out
    prompt with a several-token answer that the model gets right through the API."""
    with srv.http() as http:
        def ask(prompt: str) -> str:
            resp = http.post("/v1/chat/completions", json=_body(prompt, settings))
            return resp.json()["choices"][0]["message"]["content"]
        if not embedded:
            return RANDOM_PROMPT, ask(RANDOM_PROMPT), None
        from recipes.tasks import check, heldout_set
        # the couplet tasks: the ones the shipped checkpoint has learned (see its model card)
        pool = [ex for ex in heldout_set(6, seed=0, tasks=("couplet_next", "couplet_prev"))
                if 6 <= len(ex.answer) <= 60]
        for ex in pool[:12]:
            reply = ask(ex.prompt)
            if check(ex, reply):
                return ex.prompt, reply, ex
    pytest.fail("the embedded model answered none of 12 held-out prompts correctly through the API")


def test_playground_answers_and_animates(chromium, site, artifacts):
    srv, embedded = site
    settings = EMBEDDED_SETTINGS if embedded else SETTINGS
    with srv.http() as http:
        page = http.get("/")
    assert page.status_code == 200 and 'id="canvas"' in page.text, \
        "GET / does not serve server/api/static/index.html (mount: / -> index.html, /static -> static files)"
    prompt, api_answer, example = _pick_prompt(srv, embedded, settings)
    with Browser(*chromium) as browser:
        browser.open(srv.base_url + "/")
        assert browser.run("return document.title") == "unmask playground"
        browser.wait_for("return document.getElementById('model-name').textContent !== '…'", 10)
        browser.run(OBSERVE, settings)
        browser.type("#prompt", prompt + "\n")  # Enter sends
        status = browser.wait_for(DONE, 45)
        assert status == "Answer ready.", status
        answer = browser.run("const a = document.querySelectorAll('.msg.assistant .text');"
                             "return a[a.length - 1].textContent")
        browser.screenshot(artifacts / "playground.png")
        states = browser.run("return window.__states")
        stats = browser.run("return ['nfe', 'tpf', 'tps'].map(k => document.getElementById('stat-' + k).textContent)")
        log_busy = browser.run("return document.getElementById('log').getAttribute('aria-busy')")
        browser.resize(390, 844)
        overflow = browser.run("return document.documentElement.scrollWidth - window.innerWidth")
        browser.screenshot(artifacts / "playground-phone.png")
    assert answer and answer == api_answer
    if example is not None:
        from recipes.tasks import check
        assert check(example, answer), (example, answer)
    intermediate = {s for s in states if not s.startswith("0|")}
    assert len(intermediate) >= 2, f"canvas did not animate: {states}"
    assert states[-1].startswith("0|"), "the last canvas state still has masked positions"
    assert int(stats[0]) >= 1 and float(stats[1]) > 0 and float(stats[2]) > 0, stats
    assert log_busy == "false"
    assert overflow <= 0, f"page wider than a phone screen by {overflow}px"
