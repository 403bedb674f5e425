"""/v1/responses: the Responses API over the chat request path (same message renderer, tool plan, budget rule,
engine client and deltas), with its own wire shapes (responses_shape.py, responses_tool_shape.py)."""
from __future__ import annotations

import time

from unmask.server.api.protocol_responses import ResponsesRequest
from unmask.server.api.responses_shape import ResponseShape
from unmask.server.api.responses_tool_shape import ToolResponseShape
from unmask.server.api.serving import Prepared, StreamFlags
from unmask.server.api.serving_chat import render_messages
from unmask.server.api.serving_completion import check_prompt, default_budget


def prepare_responses(state, body: ResponsesRequest, request_id: str | None) -> Prepared:
    """Validate a Responses body (400 before any byte) and render its input as a chat prompt."""
    t0 = time.monotonic()
    body.check()
    state.check_model(body.model)
    settings = state.settings
    plan = body.tool_plan()
    ids = render_messages(state, body.messages(), True, plan)
    check_prompt(state, ids, "input")
    budget = body.max_output_tokens
    if budget is None:
        want = state.defaults.values.get("max_tokens", settings.default_max_tokens)
        budget = default_budget(state, len(ids), want, body.block_length)
    params = body.engine_params(budget, settings, state.defaults.values, "max_output_tokens")
    shape_cls = ResponseShape if plan is None or plan.choice == "none" else ToolResponseShape
    shape = shape_cls(body, body.model or settings.served_model_name, request_id, state.strings, plan)
    return Prepared(shape, [ids], [""], params, 1, bool(body.stream), StreamFlags(), t0, "input",
                    constraint_param=body.constraint()[1] or "structured_outputs")
