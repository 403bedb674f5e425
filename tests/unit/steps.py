"""Engine outputs for unit tests of what consumes them (output processor, streams, responses)."""
from __future__ import annotations

from unmask.server.engine.batch import StepOutput


def step_out(new, finished: bool = False, reason: str | None = None) -> StepOutput:
    """A StepOutput of request 'r' carrying the token ids ``new`` (one forward, all committed)."""
    return StepOutput("r", tuple(new), finished, reason, 3, len(new), nfe=1, num_committed=len(new))
