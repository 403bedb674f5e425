"""The scale-out pieces that need no Ray cluster: deployment options from flags, the Ray metrics mirror (against
a stand-in for ``ray.util.metrics``), the proxy's OpenAI-shaped errors, and the replica health rule."""
from __future__ import annotations

import asyncio
import bisect
import json
import random
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tests.deploy.conftest import HAVE_RAY, RAY_MISSING
from unmask.server.deploy.options import APP_NAME, deployment_options, serve_namespace
from unmask.server.deploy.proxy import OpenAIErrors
from unmask.server.deploy.ray_metrics import RayMetricsMirror, bucket_values


# ---------------------------------------------------------------- options

def test_config_args_parse_like_the_cli():
    ns = serve_namespace({"model": None, "device": "cpu", "max_num_seqs": 8, "max_queue": 16, "replicas": 3,
                          "disable_access_log": True, "api_key": ["a", "b"], "kv_cache_memory": "64M"})
    assert (ns.model, ns.device, ns.max_num_seqs, ns.max_queue, ns.replicas) == (None, "cpu", 8, 16, 3)
    assert ns.disable_access_log and ns.api_key == ["a", "b"] and ns.kv_cache_memory == 64 << 20
    assert serve_namespace({"model": "tiny-llada-moe-instruct"}).model == "tiny-llada-moe-instruct"
    with pytest.raises(ValueError):
        serve_namespace({"max_num_seqs": 0})
    with pytest.raises(ValueError):
        serve_namespace({"no_such_flag": 1})


def test_deployment_options_follow_the_flags():
    opts = deployment_options(serve_namespace({"device": "cpu", "max_num_seqs": 8, "max_queue": 16, "replicas": 2,
                                               "drain_timeout": 12, "num_cpus_per_replica": 2}))
    assert opts["num_replicas"] == 2 and "autoscaling_config" not in opts
    assert opts["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert opts["max_ongoing_requests"] == 8 + 16 + 8 and opts["max_queued_requests"] == 16
    assert opts["graceful_shutdown_timeout_s"] == 12 + 5
    auto = deployment_options(serve_namespace({"device": "cuda", "max_num_seqs": 32, "min_replicas": 1,
                                               "max_replicas": 4, "replicas": 2}))
    assert "num_replicas" not in auto and auto["ray_actor_options"]["num_gpus"] == 1.0
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 2,
                                          "target_ongoing_requests": 32.0}
    assert "max_queued_requests" not in auto and auto["max_ongoing_requests"] == 32 + 32 + 8  # unbounded queue
    split = deployment_options(serve_namespace({"device": "cuda", "tensor_parallel_size": 4}))
    assert split["ray_actor_options"]["num_gpus"] == 4.0  # one GPU per tensor-parallel rank of the replica
    capped = deployment_options(serve_namespace({"device": "cpu", "max_ongoing_requests": 5}))
    assert capped["max_ongoing_requests"] == 5
    with pytest.raises(ValueError):
        deployment_options(serve_namespace({"device": "cpu", "min_replicas": 5, "max_replicas": 2}))
    assert APP_NAME == "unmask"


# ---------------------------------------------------------------- Ray metrics mirror

class FakeMetric:
    def __init__(self, name, description="", tag_keys=(), boundaries=None):
        self.name, self.tag_keys, self.boundaries = name, tag_keys, boundaries
        self.calls: list[tuple[float, dict]] = []

    def _record(self, value, tags):
        assert set(tags) == set(self.tag_keys), (tags, self.tag_keys)
        self.calls.append((value, tags))

    inc = set = observe = _record


FAKE_RAY = SimpleNamespace(Counter=FakeMetric, Gauge=FakeMetric, Histogram=FakeMetric)


def test_bucket_values_keep_bucket_counts_and_the_sum():
    rng = random.Random(0)
    edges = [0.01, 0.1, 1.0, 10.0]
    for trial in range(200):
        values = [rng.choice([rng.uniform(0, 0.01), rng.uniform(0.01, 10.0), rng.uniform(10, 100)])
                  for _ in range(rng.randint(1, 30))]
        if trial % 2:
            values = [min(v, 9.9) for v in values]  # nothing above the last edge
        counts = [0] * (len(edges) + 1)
        for v in values:
            counts[bisect.bisect_left(edges, v)] += 1
        out = bucket_values(edges, counts, sum(values))
        got = [0] * (len(edges) + 1)
        for v, times in out:
            got[bisect.bisect_left(edges, v)] += times
        assert got == counts, (values, out)
        assert sum(v * t for v, t in out) == pytest.approx(sum(values), rel=1e-4, abs=1e-6)


def test_mirror_copies_counters_gauges_and_histograms_with_vllm_names():
    reg = CollectorRegistry()
    succ = Counter("vllm:request_success", "doc", ["model_name", "finished_reason"], registry=reg)
    running = Gauge("vllm:num_requests_running", "doc", ["model_name"], registry=reg)
    ttft = Histogram("vllm:time_to_first_token_seconds", "doc", ["model_name"], registry=reg,
                     buckets=(0.1, 1.0, 10.0))
    mirror = RayMetricsMirror(reg, {"replica": "r1"}, metrics_module=FAKE_RAY)
    succ.labels("m", "stop").inc(3)
    running.labels("m").set(5)
    for v in (0.05, 0.5, 0.7, 20.0):
        ttft.labels("m").observe(v)
    assert mirror.sync() == 3
    succ.labels("m", "stop").inc(2)
    ttft.labels("m").observe(2.0)
    mirror.sync()
    m = mirror._metrics
    assert m["vllm:request_success"].name == "vllm_request_success"
    assert [v for v, _ in m["vllm:request_success"].calls] == [3, 2]  # deltas
    assert m["vllm:request_success"].calls[0][1] == {"model_name": "m", "finished_reason": "stop", "replica": "r1"}
    assert m["vllm:num_requests_running"].calls[-1] == (5, {"model_name": "m", "replica": "r1"})
    hist = m["vllm:time_to_first_token_seconds"]
    assert hist.boundaries == [0.1, 1.0, 10.0]
    observed = [v for v, _ in hist.calls]
    assert [bisect.bisect_left(hist.boundaries, v) for v in observed] == [0, 1, 1, 3, 2]
    assert sum(observed) == pytest.approx(0.05 + 0.5 + 0.7 + 20.0 + 2.0, rel=1e-6)


# ---------------------------------------------------------------- proxy errors

def _call(app, method="GET") -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(OpenAIErrors(app)({"type": "http", "method": method, "path": "/v1/completions", "headers": []},
                                  receive, send))
    return sent


def _answer(sent: list[dict]) -> tuple[int, dict, bytes]:
    start = sent[0]
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, b"".join(
        m.get("body", b"") for m in sent[1:])


def test_plain_text_proxy_errors_become_openai_errors():
    async def backpressure(scope, receive, send):
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"retry-after", b"2")]})
        await send({"type": "http.response.body", "body": b"Request dropped due to backpressure"})

    status, headers, body = _answer(_call(backpressure))
    err = json.loads(body)["error"]
    assert status == 503 and headers["retry-after"] == "2" and headers["content-type"] == "application/json"
    assert err["type"] == "service_unavailable" and "backpressure" in err["message"]


def test_a_lost_replica_gets_503_or_an_ended_stream():
    async def nothing(scope, receive, send):  # the proxy gave up: the replica died before answering
        return None

    status, headers, body = _answer(_call(nothing, "POST"))
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["error"]["code"] == "replica_unavailable"

    async def cut_stream(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"x-request-id", b"a"),
                                (b"x-request-id", b"a")]})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
        raise RuntimeError("replica died")

    sent = _call(cut_stream, "POST")
    status, headers, body = _answer(sent)
    assert status == 200 and [k for k, _ in sent[0]["headers"]].count(b"x-request-id") == 1
    assert body.endswith(b"data: [DONE]\n\n") and b'"replica_unavailable"' in body
    assert sent[-1].get("more_body", False) is False


def test_json_answers_pass_through():
    async def ok(scope, receive, send):
        await send({"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"error": {"message": "x"}}'})

    assert _answer(_call(ok)) == (400, {"content-type": "application/json"}, b'{"error": {"message": "x"}}')


# ---------------------------------------------------------------- replica health

class _State:
    def __init__(self, health, load_error=None, client=None, draining=False):
        self._health, self.load_error, self.client, self.draining = health, load_error, client, draining

    def health(self):
        return self._health


@pytest.mark.skipif(not HAVE_RAY, reason=RAY_MISSING)
@pytest.mark.parametrize("state, healthy", [
    (_State((True, "ok"), client=object()), True),
    (_State((False, "model is loading")), True),
    (_State((False, "server is shutting down"), client=object(), draining=True), True),
    (_State((False, "engine died: boom"), client=object()), False),
    (_State((False, "model failed to load: x"), load_error="x"), False),
])
def test_check_health_fails_only_for_a_dead_engine_or_a_failed_load(state, healthy):
    from unmask.server.deploy.ray_serve import UnmaskReplica

    replica = UnmaskReplica()
    replica.app = SimpleNamespace(state=SimpleNamespace(unmask=state))
    if healthy:
        asyncio.run(replica.check_health())
    else:
        with pytest.raises(RuntimeError):
            asyncio.run(replica.check_health())
