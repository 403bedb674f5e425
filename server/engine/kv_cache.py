"""Paged K/V cache for Fast-dLLM's prefix and dual caches.

Legend: P pages, S page size (tokens), Hk key/value heads, D head dim. Each layer owns k and v tensors
[P, S, Hk, D]. A cached sequence reserves pages for its whole canvas at admission (its worst case), so
a running sequence never waits for memory; the pages return to the free list the moment it finishes
or is aborted. Exact-mode sequences use no pages.
"""
from __future__ import annotations

import torch

from unmask.server.config import ModelConfig

PAGE_SIZE = 16


def bytes_per_page(cfg: ModelConfig, dtype: torch.dtype, page_size: int = PAGE_SIZE) -> int:
    """K and V of one page across every layer."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * cfg.num_layers * page_size * cfg.num_kv_heads * cfg.head_dim * elem


class KVCacheManager:
    """Owns the cache tensors and the page free list."""

    def __init__(self, cfg: ModelConfig, memory_bytes: int, device: torch.device | str, dtype: torch.dtype,
                 page_size: int = PAGE_SIZE):
        self.page_size = page_size
        self.num_pages = max(0, memory_bytes // bytes_per_page(cfg, dtype, page_size))
        shape = (max(self.num_pages, 1), page_size, cfg.num_kv_heads, cfg.head_dim)
        self.layers = [(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
                       for _ in range(cfg.num_layers)]  # per layer (k [P, S, Hk, D], v [P, S, Hk, D])
        self._free = list(range(self.num_pages - 1, -1, -1))

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def can_ever_fit(self, num_tokens: int) -> bool:
        return self.pages_for(num_tokens) <= self.num_pages

    def allocate(self, num_tokens: int) -> list[int] | None:
        """Reserve pages for ``num_tokens`` tokens; None if not enough are free right now."""
        n = self.pages_for(num_tokens)
        if n > len(self._free):
            return None
        return [self._free.pop() for _ in range(n)]

    def free(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))
        pages.clear()
