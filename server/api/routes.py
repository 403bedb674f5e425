"""HTTP routes: thin wrappers that validate, build a Job and hand it to serving.py (vLLM's route /
serving / protocol split). Endpoints: /v1/completions, /v1/chat/completions, /v1/models, /health,
/ping, /metrics, /version, /load, /tokenize, /detokenize, and the playground page at /."""
from __future__ import annotations

import time
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from starlette.responses import FileResponse, Response

import unmask
from unmask.server.api import jobs, serving
from unmask.server.api.errors import APIError, bad_request
from unmask.server.api.jsonio import JSONAnswer
from unmask.server.api.metrics import CONTENT_TYPE
from unmask.server.api.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                        TokenizeRequest)
from unmask.server.api.state import AppState
from unmask.server.tokenizer import ChatTemplateError

router = APIRouter()
STARTED = int(time.time())
STATIC = Path(__file__).resolve().parent / "static"


def app_state(request: Request) -> AppState:
    return request.app.state.unmask


def require_json(request: Request) -> None:
    """400 for a body that is not JSON (vLLM's check), before FastAPI tries to parse it."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() not in ("application/json", ""):
        raise APIError(400, "Unsupported Media Type: Only 'application/json' is allowed", None,
                       "unsupported_media_type")


@router.post("/v1/completions", dependencies=[Depends(require_json)])
async def completions(body: CompletionRequest, request: Request):
    return await _execute(request, jobs.completion_job, body)


@router.post("/v1/chat/completions", dependencies=[Depends(require_json)])
async def chat_completions(body: ChatCompletionRequest, request: Request):
    return await _execute(request, jobs.chat_job, body)


async def _execute(request: Request, make_job, body):
    """Engine ready (else 503), the request's job built from its body, then run (streamed or not)."""
    state = app_state(request)
    engine = state.ready_engine()
    job = make_job(state, body, request.headers.get("x-request-id"))
    return await serving.execute(state, engine, job, request)


@router.get("/v1/models")
async def models(request: Request):
    state = app_state(request)
    s = state.settings
    max_len = state.max_model_len if state.engine is not None else None
    cards = [{"id": name, "object": "model", "created": STARTED, "owned_by": "unmask", "root": s.model_root,
              "parent": None, "max_model_len": max_len, "permission": []}
             for name in (s.served_model_name, *s.served_model_aliases)]
    return JSONAnswer({"object": "list", "data": cards})


@router.get("/health")
async def health(request: Request):
    ok, reason = app_state(request).health()
    return Response(status_code=200) if ok else JSONAnswer({"status": reason}, status_code=503,
                                                           headers={"Retry-After": "1"})


@router.api_route("/ping", methods=["GET", "POST"])
async def ping(request: Request):
    return await health(request)


@router.get("/metrics")
async def metrics(request: Request):
    return Response(app_state(request).metrics.render(), media_type=CONTENT_TYPE)


@router.get("/version")
async def version():
    return JSONAnswer({"version": unmask.__version__})


@router.get("/", include_in_schema=False)
async def playground():
    """The playground page (static/index.html; its scripts and styles are mounted at /static)."""
    page = STATIC / "index.html"
    if not page.is_file():
        raise APIError(404, "the playground is not part of this build", None, "not_found")
    return FileResponse(page, media_type="text/html")


@router.get("/load")
async def load(request: Request):
    """In-flight generation requests (vLLM's --enable-server-load-tracking answer)."""
    return JSONAnswer({"server_load": len(app_state(request).runs)})


@router.post("/tokenize", dependencies=[Depends(require_json)])
async def tokenize(body: TokenizeRequest, request: Request):
    state = app_state(request)
    state.ready_engine()
    state.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give exactly one of prompt or messages", "prompt")
    tok = state.tokenizer
    try:
        if body.prompt is not None:
            ids = tok.encode(body.prompt)
        else:
            msgs = [{"role": m.role, "content": m.content if isinstance(m.content, str) else
                     "\n".join(p.text or "" for p in m.content or [])} for m in body.messages]
            ids = tok.encode_chat(msgs, add_generation_prompt=body.add_generation_prompt)
    except ChatTemplateError as exc:
        raise bad_request(str(exc), "messages", "chat_template_error") from None
    except Exception as exc:  # noqa: BLE001 - text the tokenizer cannot take
        raise bad_request(f"could not tokenize: {type(exc).__name__}", "prompt") from None
    out = {"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids}
    if body.return_token_strs:
        out["token_strs"] = [state.strings(t) for t in ids]
    return JSONAnswer(out)


@router.post("/detokenize", dependencies=[Depends(require_json)])
async def detokenize(body: DetokenizeRequest, request: Request):
    state = app_state(request)
    state.ready_engine()
    state.check_model(body.model)
    vocab = state.engine.engine.model_config.vocab_size
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is out of range [0, {vocab})", "tokens")
    return JSONAnswer({"prompt": state.tokenizer.decode(body.tokens)})
