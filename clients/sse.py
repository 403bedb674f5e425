"""A server-sent events reader (the WHATWG event-stream rules we need), for sync and async line iterators.

Lines are ``field: value``; a blank line dispatches the event; ``:`` starts a comment; several ``data``
lines join with newlines. ``[DONE]`` is returned like any other event (the caller decides to stop).
"""
from __future__ import annotations

import dataclasses
import json
from typing import AsyncIterable, AsyncIterator, Iterable, Iterator


@dataclasses.dataclass(frozen=True)
class Event:
    event: str | None
    """The ``event:`` name; None for plain ``data:`` events (all OpenAI chunks)."""
    data: str

    @property
    def is_done(self) -> bool:
        return self.data.strip() == "[DONE]"

    def json(self):
        return json.loads(self.data)


class SSEDecoder:
    """Feed lines (without their line ending); get an Event back when one is complete."""

    def __init__(self):
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        return None

    def _dispatch(self) -> Event | None:
        if not self._data and self._event is None:
            return None
        ev = Event(self._event, "\n".join(self._data))
        self._event, self._data = None, []
        return ev

    def close(self) -> Event | None:
        """End of input: a final event not followed by a blank line still counts."""
        return self._dispatch()


def iter_events(lines: Iterable[str]) -> Iterator[Event]:
    dec = SSEDecoder()
    for line in lines:
        ev = dec.feed(line)
        if ev is not None:
            yield ev
    ev = dec.close()
    if ev is not None:
        yield ev


async def aiter_events(lines: AsyncIterable[str]) -> AsyncIterator[Event]:
    dec = SSEDecoder()
    async for line in lines:
        ev = dec.feed(line)
        if ev is not None:
            yield ev
    ev = dec.close()
    if ev is not None:
        yield ev
