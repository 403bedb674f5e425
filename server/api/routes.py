"""HTTP routes: thin wrappers that prepare a request (serving_completion / serving_chat / serving_responses)
and hand it to serving.py (vLLM's route / serving / protocol split). Endpoints: /v1/completions,
/v1/chat/completions, /v1/responses, /v1/models, /health, /ping, /metrics, /version, /load, /tokenize,
/detokenize, and the playground page at /."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from starlette.responses import FileResponse, Response

import unmask
from unmask.server.api.errors import APIError, JSONAnswer, bad_request
from unmask.server.api.metrics import CONTENT_TYPE
from unmask.server.api.protocol import ChatCompletionRequest, CompletionRequest
from unmask.server.api.protocol_tokenize import DetokenizeRequest, TokenizeRequest
from unmask.server.api.protocol_responses import ResponsesRequest
from unmask.server.api.serving import serve
from unmask.server.api.serving_responses import prepare_responses
from unmask.server.api.serving_chat import prepare_chat, render_messages
from unmask.server.api.serving_completion import check_text_size, encode_text, prepare_completion

router = APIRouter()
OFFLOAD_BYTES = 64 << 10
"""Bodies larger than this are tokenized in a worker thread."""
STARTED = int(time.time())
STATIC = Path(__file__).resolve().parent / "static"


def app_state(request: Request):
    """The app's ``AppState`` (server/api/app.py)."""
    return request.app.state.unmask


def require_json(request: Request) -> None:
    """400 for a body that is not JSON (vLLM's check), before FastAPI tries to parse it."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() not in ("application/json", ""):
        raise APIError(400, "Unsupported Media Type: Only 'application/json' is allowed", None,
                       "unsupported_media_type")


@router.post("/v1/completions", dependencies=[Depends(require_json)])
async def completions(body: CompletionRequest, request: Request):
    return await _execute(request, prepare_completion, body)


@router.post("/v1/chat/completions", dependencies=[Depends(require_json)])
async def chat_completions(body: ChatCompletionRequest, request: Request):
    return await _execute(request, prepare_chat, body)


async def _execute(request: Request, prepare, body):
    """Engine ready (else 503), the request prepared from its body, then served (streamed or not)."""
    state = app_state(request)
    state.ready_client()
    prepared = await _off_loop_if_large(request, prepare, state, body, request.headers.get("x-request-id"))
    return await serve(state, prepared, request)


async def _off_loop_if_large(request: Request, fn, *args):
    """Run ``fn(*args)`` (tokenizing, rendering) in a worker thread when the body is large, so the event loop
    (``/health``, other streams) never waits on it; small bodies stay inline (no thread hop)."""
    if int(request.headers.get("content-length") or 0) > OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


@router.post("/v1/responses", dependencies=[Depends(require_json)])
async def responses(body: ResponsesRequest, request: Request):
    return await _execute(request, prepare_responses, body)


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str):
    """Nothing is stored: every response id is unknown here (as with ``store: false``)."""
    raise APIError(404, f"response {response_id[:64]!r} was not stored: this server keeps no responses "
                        "(store=false semantics)", "response_id", "not_found")


@router.get("/v1/models")
async def models(request: Request):
    state = app_state(request)
    s = state.settings
    max_len = state.client.model_info.max_model_len if state.client is not None else None
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
    return JSONAnswer({"server_load": len(app_state(request).streams)})


@router.post("/tokenize", dependencies=[Depends(require_json)])
async def tokenize(body: TokenizeRequest, request: Request):
    state = app_state(request)
    state.ready_client()
    state.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("give exactly one of prompt or messages", "prompt")
    ids = await _off_loop_if_large(request, _tokenize, state, body)
    out = {"count": len(ids), "max_model_len": state.client.model_info.max_model_len, "tokens": ids}
    if body.return_token_strs:
        out["token_strs"] = [state.strings(t) for t in ids]
    return JSONAnswer(out)


def _tokenize(state, body: TokenizeRequest) -> list[int]:
    """/tokenize's ids, within the same size bound as a prompt."""
    if body.prompt is not None:
        check_text_size(state, len(body.prompt), "prompt")
        return encode_text(state.client.tokenizer, body.prompt, "prompt")
    return render_messages(state, body.messages, body.add_generation_prompt)


@router.post("/detokenize", dependencies=[Depends(require_json)])
async def detokenize(body: DetokenizeRequest, request: Request):
    state = app_state(request)
    state.ready_client()
    state.check_model(body.model)
    vocab = state.client.model_info.vocab_size
    bad = next((t for t in body.tokens if not 0 <= t < vocab), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is out of range [0, {vocab})", "tokens")
    return JSONAnswer({"prompt": state.client.tokenizer.decode(body.tokens)})
