"""ServerSettings: the HTTP layer's own limits and defaults (the engine's live in EngineConfig)."""
from __future__ import annotations

import dataclasses

OPEN_PATHS = ("/health", "/ping", "/metrics", "/version", "/", "/static/*")


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    served_model_name: str = "tiny-llada-instruct"
    """The model name clients send and /v1/models lists; requests naming another model get 404."""
    served_model_aliases: tuple[str, ...] = ()
    """Further names the server answers to (``--served-model-name a b``: 'b'); listed by /v1/models too."""
    model_root: str = ""
    """Checkpoint directory (reported as ``root`` by /v1/models)."""
    api_keys: tuple[str, ...] = ()
    """Accepted bearer tokens; empty = no authentication. Compared in constant time."""
    open_paths: tuple[str, ...] = OPEN_PATHS
    """Paths reachable without a key when ``api_keys`` is set (``/x/*`` = every path under ``/x/``)."""
    max_prompt_tokens: int | None = None
    """Longest prompt accepted (tokens); None = only the model's context limit applies."""
    max_tokens_limit: int = 4096
    """Largest ``max_tokens`` / ``max_completion_tokens`` accepted."""
    max_steps: int = 4096
    """Largest ``steps`` accepted."""
    max_choices: int = 64
    """Largest number of choices one request may ask for (``n`` × number of prompts)."""
    max_body_bytes: int = 16 << 20
    """Largest request body; larger bodies get 413 before they are parsed."""
    default_max_tokens: int = 256
    """Chat default when the body gives no ``max_completion_tokens`` / ``max_tokens`` (capped by context)."""
    completion_default_max_tokens: int = 16
    """/v1/completions default ``max_tokens`` (OpenAI's)."""
    default_preset: str | None = None
    """Preset applied to requests that choose none: None/'exact' (reference algorithm) or 'fast'."""
    drain_timeout: float = 30.0
    """Seconds SIGTERM waits for in-flight requests before aborting them."""
    retry_after: int = 1
    """Seconds suggested by the Retry-After header of 503 answers."""
    stream_write_timeout: float = 30.0
    """A streaming client that accepts no data for this many seconds is disconnected (request aborted)."""
    max_stream_buffer: int = 1024
    """Engine outputs a stream may hold unread; past that its client has stopped reading and the request is
    aborted (bounds the memory a client that never reads can make the server hold)."""
