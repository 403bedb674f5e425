"""A progress bar: tqdm when installed, otherwise a minimal line printer with the same small API."""
from __future__ import annotations

import sys
import time


class _SimpleBar:
    """Iterates ``iterable`` and prints 'step/total, rate, eta, postfix' about every 5 seconds."""

    def __init__(self, iterable, initial: int = 0, total: int | None = None):
        self.iterable, self.n, self.total = iterable, initial, total
        self.postfix, self._start, self._start_n, self._last = "", time.time(), initial, 0.0

    def set_postfix(self, **kw) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in kw.items())

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.n += 1
            now = time.time()
            if now - self._last > 5 or self.n == self.total:
                self._last = now
                rate = (self.n - self._start_n) / max(1e-9, now - self._start)
                eta = (self.total - self.n) / rate if self.total and rate else 0
                print(f"\r{self.n}/{self.total} {rate:.2f} it/s eta {eta:.0f}s {self.postfix}",
                      end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)


def progress(iterable, initial: int = 0, total: int | None = None):
    """A tqdm bar if tqdm is importable, else ``_SimpleBar``; both support ``set_postfix``."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _SimpleBar(iterable, initial, total)
    return tqdm(iterable, initial=initial, total=total, mininterval=5, dynamic_ncols=True)
