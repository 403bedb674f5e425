"""Prometheus metrics for /metrics: vLLM's names where they apply (SERVING.md §3.1), ``unmask:`` for the
diffusion-specific ones (NFE, tokens per forward, refresh/block steps, batch occupancy).

Request-level metrics are observed by the API when a choice finishes; engine-level ones are read from
the engine client's snapshot at scrape time by :class:`EngineCollector`. Each app owns its registry.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
TPF_BUCKETS = (0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32)

# (metric name, EngineStats field, help) for the engine counters exported at scrape time.
_ENGINE_COUNTERS = (
    ("unmask:engine_iterations", "iterations", "Engine iterations that ran a batch."),
    ("unmask:nfe", "nfe", "Sequence forward evaluations (NFE)."),
    ("unmask:refresh_steps", "refresh_steps", "Sequence steps that fed the full canvas (refresh steps)."),
    ("unmask:block_steps", "block_steps", "Sequence steps that fed only the current block (cached block steps)."),
    ("unmask:committed_tokens", "committed_tokens", "Generation positions committed."),
    ("unmask:forward_tokens", "forward_tokens", "Tokens fed to the model."),
    ("unmask:failed_steps", "failed_steps", "Engine iterations whose step raised."),
)


class EngineCollector:
    """Gauges and counters read from the engine client's snapshot at scrape time (no client yet: nothing)."""

    def __init__(self, model_name: str, get_client: Callable, max_num_seqs: int):
        self.model_name, self.get_client, self.max_num_seqs = model_name, get_client, max_num_seqs

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=["model_name"])
        g.add_metric([self.model_name], value)
        return g

    def collect(self):
        client = self.get_client()
        if client is None:
            return
        snap = client.snapshot()
        c = snap.counters
        yield self._gauge("vllm:num_requests_running", "Requests being denoised.", snap.running)
        yield self._gauge("vllm:num_requests_waiting", "Requests waiting for a slot.", snap.waiting)
        yield self._gauge("vllm:kv_cache_usage_perc", "Fraction of prefix/dual cache pages in use (0-1).",
                          snap.kv_cache_usage)
        yield self._gauge("unmask:batch_occupancy", "Sequences in the latest iteration / max_num_seqs.",
                          c["last_batch_size"] / self.max_num_seqs)
        yield self._gauge("unmask:mean_batch_size", "Mean sequences per engine iteration.",
                          c["batch_size_sum"] / c["iterations"] if c["iterations"] else 0.0)
        yield self._gauge("unmask:tokens_per_forward", "Committed tokens per forward evaluation (TPF).",
                          c["committed_tokens"] / c["nfe"] if c["nfe"] else 0.0)
        yield self._gauge("unmask:engine_dead", "1 if the engine loop has died.", float(snap.dead))
        for name, field, doc in _ENGINE_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["model_name"])
            counter.add_metric([self.model_name], c[field])
            yield counter
        yield self._iteration_tokens(snap.iteration_tokens, c["forward_tokens"])

    def _iteration_tokens(self, buckets: tuple[tuple[float, int], ...], total: int) -> HistogramMetricFamily:
        h = HistogramMetricFamily("vllm:iteration_tokens_total", "Tokens fed to the model per engine iteration.",
                                  labels=["model_name"])
        cumulative, running = [], 0
        for bound, count in buckets:
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
        h.add_metric([self.model_name], cumulative, total)
        return h


class Metrics:
    def __init__(self, model_name: str, get_client: Callable, max_num_seqs: int):
        self.model_name = model_name
        self.registry = reg = CollectorRegistry()
        lab = ["model_name"]

        def hist(name, doc, buckets):
            return Histogram(name, doc, lab, registry=reg, buckets=buckets).labels(model_name)

        def count(name, doc):
            return Counter(name, doc, lab, registry=reg).labels(model_name)

        self.prompt_tokens = count("vllm:prompt_tokens", "Prompt tokens processed.")
        self.generation_tokens = count("vllm:generation_tokens", "Tokens returned to clients.")
        self.rejections = count("vllm:admission_rejections", "Requests refused with 503 (queue full, draining).")
        self.stalled_streams = count("unmask:stalled_streams", "Streams cut off because their client stopped reading.")
        self._success = Counter("vllm:request_success", "Finished choices by finish reason.",
                                lab + ["finished_reason"], registry=reg)
        self.ttft = hist("vllm:time_to_first_token_seconds", "Time to the first returned text.", LATENCY_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Request latency until its last token.", LATENCY_BUCKETS)
        self.tpot = hist("vllm:request_time_per_output_token_seconds", "(E2E - TTFT) / (tokens - 1).",
                         LATENCY_BUCKETS)
        self.req_prompt = hist("vllm:request_prompt_tokens", "Prompt tokens per request.", TOKEN_BUCKETS)
        self.req_gen = hist("vllm:request_generation_tokens", "Returned tokens per choice.", TOKEN_BUCKETS)
        self.req_n = hist("vllm:request_params_n", "The n parameter of requests.", (1, 2, 5, 10, 20, 50))
        self.req_max = hist("vllm:request_params_max_tokens", "The max_tokens of requests.", TOKEN_BUCKETS)
        self.req_nfe = hist("unmask:request_nfe", "Forward evaluations per choice.", TOKEN_BUCKETS)
        self.req_tpf = hist("unmask:request_tokens_per_forward", "Committed tokens per forward, per choice.",
                            TPF_BUCKETS)
        self.queue_time = hist("vllm:request_queue_time_seconds", "Time a choice waited before it was scheduled.",
                               LATENCY_BUCKETS)
        self.inference_time = hist("vllm:request_inference_time_seconds",
                                   "Time from a choice's scheduling to its last token.", LATENCY_BUCKETS)
        self.itl = hist("vllm:inter_token_latency_seconds", "Time between consecutive streamed text chunks.",
                        LATENCY_BUCKETS)
        reg.register(EngineCollector(model_name, get_client, max_num_seqs))

    def request_started(self, n: int, max_tokens: int) -> None:
        self.req_n.observe(n)
        self.req_max.observe(max_tokens)

    def choice_finished(self, reason: str, prompt_tokens: int, tokens: int, nfe: int, tpf: float,
                        ttft: float | None, e2e: float, queued: float | None = None,
                        inference: float | None = None) -> None:
        self._success.labels(self.model_name, reason).inc()
        if queued is not None:
            self.queue_time.observe(queued)
        if inference is not None:
            self.inference_time.observe(inference)
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(tokens)
        if prompt_tokens:  # a prompt is observed once, with its first choice
            self.req_prompt.observe(prompt_tokens)
        self.req_gen.observe(tokens)
        self.e2e.observe(e2e)
        if nfe:
            self.req_nfe.observe(nfe)
            self.req_tpf.observe(tpf)
        if ttft is not None:
            self.ttft.observe(ttft)
            if tokens > 1:
                self.tpot.observe((e2e - ttft) / (tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
