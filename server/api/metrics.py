"""Prometheus metrics for /metrics: vLLM's names where they apply (SERVING.md §3.1), ``unmask:`` for the
diffusion-specific ones (NFE, tokens per forward, refresh/block steps, batch occupancy).

Request-level metrics are observed by the API when a choice finishes; engine-level ones are read from
``EngineStats`` and the scheduler at scrape time by :class:`EngineCollector`. Each app owns its registry.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
    """Gauges and counters read from the live engine at scrape time (None engine: nothing yet)."""

    def __init__(self, model_name: str, get_engine: Callable, max_num_seqs: int):
        self.model_name, self.get_engine, self.max_num_seqs = model_name, get_engine, max_num_seqs

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=["model_name"])
        g.add_metric([self.model_name], value)
        return g

    def collect(self):
        aeng = self.get_engine()
        if aeng is None:
            return
        eng, st = aeng.engine, aeng.engine.stats
        kv = eng.kv
        usage = (kv.num_pages - kv.num_free) / kv.num_pages if kv is not None and kv.num_pages else 0.0
        yield self._gauge("vllm:num_requests_running", "Requests being denoised.", aeng.num_running())
        yield self._gauge("vllm:num_requests_waiting", "Requests waiting for a slot.", aeng.num_waiting())
        yield self._gauge("vllm:kv_cache_usage_perc", "Fraction of prefix/dual cache pages in use (0-1).", usage)
        yield self._gauge("unmask:batch_occupancy", "Sequences in the latest iteration / max_num_seqs.",
                          st.last_batch_size / self.max_num_seqs)
        yield self._gauge("unmask:mean_batch_size", "Mean sequences per engine iteration.",
                          st.batch_size_sum / st.iterations if st.iterations else 0.0)
        yield self._gauge("unmask:tokens_per_forward", "Committed tokens per forward evaluation (TPF).",
                          st.committed_tokens / st.nfe if st.nfe else 0.0)
        yield self._gauge("unmask:engine_dead", "1 if the engine loop has died.", float(aeng.is_dead))
        for name, field, doc in _ENGINE_COUNTERS:
            c = CounterMetricFamily(name, doc, labels=["model_name"])
            c.add_metric([self.model_name], getattr(st, field))
            yield c


class Metrics:
    def __init__(self, model_name: str, get_engine: Callable, max_num_seqs: int):
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
        reg.register(EngineCollector(model_name, get_engine, max_num_seqs))

    def request_started(self, n: int, max_tokens: int) -> None:
        self.req_n.observe(n)
        self.req_max.observe(max_tokens)

    def choice_finished(self, reason: str, prompt_tokens: int, tokens: int, nfe: int, tpf: float,
                        ttft: float | None, e2e: float) -> None:
        self._success.labels(self.model_name, reason).inc()
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
