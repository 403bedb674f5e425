"""Sweep figures (matplotlib, headless Agg backend): throughput and latency percentiles vs concurrency.

``rows`` are sweep rows: serving.py result dicts with ``preset`` and ``concurrency`` added. One line per
preset; the x axis is the concurrency on a log2 scale. Every figure is titled with the machine and model.
"""
from __future__ import annotations

from pathlib import Path

_STYLES = {"p50": ":", "median": ":", "p90": "--", "p99": "-"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _series(rows: list[dict], preset: str, key: str) -> tuple[list[int], list[float]]:
    pts = sorted((r["concurrency"], r[key]) for r in rows if r["preset"] == preset and r.get(key) is not None)
    return [c for c, _ in pts], [v for _, v in pts]


def _axis(ax, ylabel: str, concurrency: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(concurrency, [str(c) for c in concurrency])
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _log_y(ax) -> None:
    """Log y axis labelled 1, 2, 5 × 10^k in plain numbers."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _figure(rows: list[dict]):
    """-> (pyplot, two side-by-side axes, presets, concurrency levels) for one figure over ``rows``."""
    plt = _plt()
    _, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    return plt, axes, sorted({r["preset"] for r in rows}), sorted({r["concurrency"] for r in rows})


def _save(plt, axes, path: Path, suptitle: str) -> Path:
    fig = axes[0].figure
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def throughput_plot(rows: list[dict], path: Path, title: str) -> Path:
    """Output tokens/s and requests/s vs concurrency."""
    plt, axes, presets, conc = _figure(rows)
    for key, ax, label in (("output_throughput", axes[0], "output tokens/s"),
                           ("request_throughput", axes[1], "requests/s")):
        for preset in presets:
            ax.plot(*_series(rows, preset, key), marker="o", label=preset)
        _axis(ax, label, conc)
    return _save(plt, axes, path, f"Throughput vs concurrency — {title}")


def latency_plot(rows: list[dict], path: Path, title: str, percentiles: tuple[str, ...] = ("median", "p90", "p99")
                 ) -> Path:
    """E2E latency and TTFT percentiles (ms) vs concurrency: colour = preset, line style = percentile."""
    plt, axes, presets, conc = _figure(rows)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for metric, ax, label in (("e2el", axes[0], "end-to-end latency (ms)"), ("ttft", axes[1], "TTFT (ms)")):
        for i, preset in enumerate(presets):
            for pct in percentiles:
                xs, ys = _series(rows, preset, f"{pct}_{metric}_ms")
                ax.plot(xs, ys, marker="o", ms=3, color=colours[i % len(colours)], linestyle=_STYLES.get(pct, "-"),
                        label=f"{preset} {pct}")
        _log_y(ax)
        _axis(ax, label, conc)
    return _save(plt, axes, path, f"Latency percentiles vs concurrency — {title}")
