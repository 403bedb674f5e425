"""The replica's Prometheus registry (the same metrics as ``/metrics``: vLLM's names, ``unmask:`` for the
diffusion ones) exported through Ray's metrics (``ray.util.metrics``), so one Prometheus scrape of the Ray
nodes' metrics ports sees every replica, next to Serve's own ``ray_serve_*`` metrics. This is how Ray Serve
LLM exports vLLM's metrics, and what KubeRay's Prometheus setup scrapes (a PodMonitor on port 8080).

Ray takes no ``:`` in names and prefixes ``ray_``: ``vllm:num_requests_running`` is exported as
``ray_vllm_num_requests_running`` (see ``ray_name``), with a ``replica`` tag added (and Ray's own node and
session tags); sum or average over ``replica`` for the deployment.

Every ``PERIOD_S`` the registry is read and copied: gauges are set, counters increased by their change, and
histograms re-observed so that each bucket count is exact and the sum exact up to rounding (each new
observation is placed inside its bucket, at the position that makes the bucket values add up to the
observed sum change).
"""
from __future__ import annotations

import asyncio
import logging
import math
from typing import ClassVar

log = logging.getLogger("unmask.deploy")

PERIOD_S = 2.0
EPS = 1e-6


def ray_name(name: str) -> str:
    """Ray no longer accepts ':' in metric names: ``vllm:num_requests_running`` -> ``vllm_num_requests_running``
    (exported as ``ray_vllm_num_requests_running``, like Ray Serve LLM's vLLM metrics)."""
    return name.replace(":", "_")


def bucket_values(edges: list[float], counts: list[int], total: float) -> list[tuple[float, int]]:
    """(value, times) to observe so ``counts`` land in the buckets ``(edges[i-1], edges[i]]`` (the last one
    above ``edges[-1]``, counts has len(edges) + 1) and the values add up to ``total`` when they can."""
    lows = [0.0, *edges]
    finite = [(lo, hi, c) for lo, hi, c in zip(lows, edges, counts) if c]
    over = counts[len(edges)] if len(counts) > len(edges) else 0
    out: list[tuple[float, int]] = []
    if over:  # values above the last edge: finite buckets at their middle, the rest carries the remainder
        out = [((lo + hi) / 2, c) for lo, hi, c in finite]
        rest = total - sum(v * c for v, c in out)
        top = edges[-1] if edges else 0.0
        out.append((max(top * (1 + EPS) + EPS, rest / over), over))
        return out
    smin = sum(lo * c for lo, _, c in finite)
    smax = sum(hi * c for _, hi, c in finite)
    t = (total - smin) / (smax - smin) if smax > smin else 1.0
    t = min(1.0, max(EPS, t))  # strictly above the lower edge: that value belongs to the bucket below
    return [(lo + t * (hi - lo), c) for lo, hi, c in finite]


class RayMetricsMirror:
    """Copies one prometheus_client registry into ``ray.util.metrics`` (one per replica process)."""

    current: ClassVar["RayMetricsMirror | None"] = None

    def __init__(self, registry, tags: dict[str, str], metrics_module=None):
        """``metrics_module``: ``ray.util.metrics`` (the default) or a stand-in with the same classes."""
        self.registry, self.tags, self._module = registry, tags, metrics_module
        self._metrics: dict[str, object] = {}
        self._last: dict[tuple, float] = {}
        self._task: asyncio.Task | None = None

    @classmethod
    def for_replica(cls, registry, period: float = PERIOD_S) -> "RayMetricsMirror | None":
        """Start the periodic export in this replica (None without a registry)."""
        if registry is None:
            log.warning("no metrics registry on the app: Ray metrics export is off")
            return None
        mirror = cls(registry, {"replica": _replica_name()})
        mirror._task = asyncio.get_running_loop().create_task(mirror._run(period))
        cls.current = mirror
        return mirror

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if RayMetricsMirror.current is self:
            RayMetricsMirror.current = None

    async def _run(self, period: float) -> None:
        while True:
            try:
                self.sync()
            except Exception:  # noqa: BLE001 - metrics must never take the replica down
                log.exception("Ray metrics export failed")
            await asyncio.sleep(period)

    def sync(self) -> int:
        """Copy every sample now; returns the number of metric families exported."""
        n = 0
        for fam in self.registry.collect():
            if fam.type in ("counter", "gauge", "histogram"):
                getattr(self, "_" + fam.type)(fam)
                n += 1
        return n

    def _metric(self, kind: str, name: str, doc: str, keys: tuple[str, ...], **kw):
        if self._module is None:
            from ray.util import metrics
            self._module = metrics
        if name not in self._metrics:
            mod = self._module
            cls = {"counter": mod.Counter, "gauge": mod.Gauge, "histogram": mod.Histogram}[kind]
            self._metrics[name] = cls(ray_name(name), description=doc or name, tag_keys=(*keys, *self.tags), **kw)
        return self._metrics[name]

    def _tags(self, labels: dict[str, str]) -> dict[str, str]:
        return {**{k: v for k, v in labels.items() if k != "le"}, **self.tags}

    def _gauge(self, fam) -> None:
        for s in fam.samples:
            self._metric("gauge", s.name, fam.documentation, tuple(s.labels)).set(s.value, tags=self._tags(s.labels))

    def _counter(self, fam) -> None:
        for s in fam.samples:
            if not s.name.endswith("_total"):
                continue  # _created
            key = (s.name, tuple(sorted(s.labels.items())))
            delta = s.value - self._last.get(key, 0.0)
            self._last[key] = s.value
            counter = self._metric("counter", fam.name, fam.documentation, tuple(s.labels))
            if delta > 0:
                counter.inc(delta, tags=self._tags(s.labels))

    def _histogram(self, fam) -> None:
        series: dict[tuple, dict] = {}
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            one = series.setdefault(labels, {"le": [], "sum": 0.0})
            if s.name.endswith("_bucket"):
                one["le"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                one["sum"] = s.value
        for labels, one in series.items():
            cum = [c for _, c in sorted(one["le"])]
            edges = [e for e, _ in sorted(one["le"]) if not math.isinf(e)]
            key = (fam.name, labels)
            last_cum, last_sum = self._last.get(key, ([0.0] * len(cum), 0.0))
            self._last[key] = (cum, one["sum"])
            counts = [int(round(a - b)) for a, b in zip(_per_bucket(cum), _per_bucket(last_cum))]
            hist = self._metric("histogram", fam.name, fam.documentation, tuple(k for k, _ in labels),
                                boundaries=edges)
            tags = self._tags(dict(labels))
            for value, times in bucket_values(edges, counts, one["sum"] - last_sum):
                for _ in range(times):
                    hist.observe(value, tags=tags)


def _per_bucket(cumulative: list[float]) -> list[float]:
    return [c - p for c, p in zip(cumulative, [0.0, *cumulative[:-1]])]


def _replica_name() -> str:
    try:
        from ray import serve
        ctx = serve.get_replica_context()
        rid = getattr(ctx, "replica_id", None)
        return str(getattr(rid, "unique_id", None) or getattr(ctx, "replica_tag", None) or rid)
    except Exception:  # noqa: BLE001 - outside a replica (tests)
        import os
        return f"pid-{os.getpid()}"
