"""AppState: what the routes share — the engine (once loaded), settings, metrics, in-flight runs, and
the server's phase (loading → ready → draining; or failed / engine dead)."""
from __future__ import annotations

import itertools
import uuid

from unmask.server.api.denoise import TokenStrings
from unmask.server.api.errors import APIError, unavailable
from unmask.server.api.metrics import Metrics
from unmask.server.api.run import GenerationRun
from unmask.server.api.settings import ServerSettings
from unmask.server.engine.async_engine import AsyncEngine


class AppState:
    def __init__(self, settings: ServerSettings, max_num_seqs: int):
        self.settings = settings
        self.engine: AsyncEngine | None = None
        self.load_error: str | None = None
        self.draining = False
        self.runs: set[GenerationRun] = set()
        self.metrics = Metrics(settings.served_model_name, lambda: self.engine, max_num_seqs)
        self.strings: TokenStrings | None = None
        self._ids = itertools.count()

    def set_engine(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.strings = TokenStrings(engine.engine.tokenizer)

    @property
    def tokenizer(self):
        return self.engine.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.engine.max_model_len

    def health(self) -> tuple[bool, str]:
        """(ready, reason): ready only when the engine is loaded, alive and the server is not draining."""
        if self.load_error is not None:
            return False, f"model failed to load: {self.load_error}"
        if self.engine is None:
            return False, "model is loading"
        if self.engine.is_dead:
            return False, f"engine died: {self.engine.dead_reason or 'loop stopped'}"
        if self.draining:
            return False, "server is shutting down"
        return True, "ok"

    def ready_engine(self) -> AsyncEngine:
        """The engine, or 503 + Retry-After (loading, shutting down, or engine dead)."""
        ok, reason = self.health()
        if not ok:
            code = "shutting_down" if self.draining else ("engine_dead" if self.engine is not None else "not_ready")
            self.metrics.rejections.inc()
            raise unavailable(f"the server cannot take requests now: {reason}", code, self.settings.retry_after)
        return self.engine

    def check_model(self, model: str | None) -> None:
        """404 unless ``model`` is absent/empty or a served name (vLLM: model is optional)."""
        if model and model != self.settings.served_model_name and model not in self.settings.served_model_aliases:
            raise APIError(404, f"The model `{model}` does not exist. This server serves "
                                f"`{self.settings.served_model_name}`.", "model", "model_not_found")

    def new_ids(self, count: int) -> list[str]:
        """Engine request ids: unique even when clients reuse an X-Request-Id."""
        base = f"{uuid.uuid4().hex[:12]}{next(self._ids)}"
        return [f"{base}-{i}" for i in range(count)]


def response_id(prefix: str, header: str | None) -> str:
    """``cmpl-``/``chatcmpl-`` + the client's X-Request-Id when sent (vLLM), else a fresh uuid."""
    return prefix + (header[:256] if header else uuid.uuid4().hex)
