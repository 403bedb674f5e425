"""Tokenizer: ``tokenizer.json`` through the ``tokenizers`` library, the checkpoint's own chat template
(jinja2, from ``tokenizer_config.json``) and an incremental detokenizer for streaming.

BOS is never added here: the LLaDA Instruct template supplies it (LLADA-SPEC.md §2), and raw prompts
(Base models) are encoded as they are.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer as HFTokenizer


log = logging.getLogger("unmask.tokenizer")
_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"  # private-use characters around a message's index in the rendering
_MARK = re.compile(f"{_MARK_OPEN}(\\d+){_MARK_CLOSE}")
LONG_TEXT_CHARS = 4096
"""Texts longer than this are encoded with the GIL released (Tokenizer.encode)."""


class ChatTemplateError(ValueError):
    """The checkpoint has no chat template, or rendering it failed."""


def _raise(message: str):
    raise ChatTemplateError(message)


def _token_str(value) -> str | None:
    """tokenizer_config.json stores special tokens as strings or as {"content": ...} objects."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    """Encode/decode plus chat rendering for one checkpoint directory."""

    def __init__(self, tok: HFTokenizer, config: dict):
        self._tok = tok
        self.config = config
        self.chat_template: str | None = config.get("chat_template")
        if isinstance(self.chat_template, list):  # HF allows named templates; "default" is the chat one
            named = {t.get("name"): t.get("template") for t in self.chat_template}
            self.chat_template = named.get("default")
        self.bos_token = _token_str(config.get("bos_token"))
        self.eos_token = _token_str(config.get("eos_token"))
        self.special_ids = frozenset(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
        self._plain = HFTokenizer.from_str(tok.to_str())  # the same tokenizer, special-token strings as text
        self._plain.encode_special_tokens = True
        self._env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._env.globals["raise_exception"] = _raise

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise FileNotFoundError(f"{tok_file}: missing (the checkpoint needs tokenizer.json)")
        cfg_file = path / "tokenizer_config.json"
        config = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        return cls(HFTokenizer.from_file(str(tok_file)), config)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer defines (may be below the model's embedding rows)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def backend_json(self) -> str:
        """The tokenizer as ``tokenizer.json`` text (what the grammar engine builds its token table from)."""
        return self._tok.to_str()

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        """text -> token ids, no special tokens added (special-token strings in the text are recognised).
        Long texts go through the batch call, which releases the GIL while it works (other threads, such as
        an event loop, keep running)."""
        if len(text) > LONG_TEXT_CHARS:
            return self._tok.encode_batch([text], add_special_tokens=False)[0].ids
        return self._tok.encode(text, add_special_tokens=False).ids

    @functools.cached_property
    def max_token_chars(self) -> int:
        """Longest token string of the vocabulary (added tokens included), plus one: no token covers more
        characters of input text, so ``len(text) / max_token_chars`` is about the fewest tokens ``text`` can
        encode to (see :meth:`min_tokens`)."""
        return max((len(t) for t in self._tok.get_vocab(with_added_tokens=True)), default=1) + 1

    def min_tokens(self, num_chars: int) -> int:
        """A lower bound on the tokens of any text of ``num_chars`` characters, cheap to compute before
        tokenizing (halved once more for normalisers that compose characters)."""
        return num_chars // (2 * self.max_token_chars)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, tools: list | None = None) -> str:
        """messages [{role, content: str}] -> the prompt string the checkpoint's template produces (``tools``, the
        OpenAI tool definitions, are passed to templates that render them)."""
        if not self.chat_template:
            raise ChatTemplateError("this model has no chat template (tokenizer_config.json chat_template); "
                                    "use /v1/completions with a raw prompt")
        try:
            template = self._env.from_string(self.chat_template)
            return template.render(messages=messages, bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                                   add_generation_prompt=add_generation_prompt, tools=tools)
        except ChatTemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"chat template failed: {exc}") from exc

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True, tools: list | None = None) -> list[int]:
        """Render with the chat template, then encode (the template already holds BOS). Message text is data,
        not control: only the template's own markup becomes special tokens; a special-token string inside a
        message (a role header, end of turn, the mask token) is encoded as the plain text it is, so a client
        cannot forge turns. Each message's text is rendered as a placeholder and encoded on its own; a template
        that alters the placeholders (it rewrites message text) falls back to encoding the whole rendering."""
        marked = [{**m, "content": f"{_MARK_OPEN}{i}{_MARK_CLOSE}"} if isinstance(m.get("content"), str) else m
                  for i, m in enumerate(messages)]
        pieces = _MARK.split(self.render_chat(marked, add_generation_prompt, tools))
        used = [int(p) for p in pieces[1::2]]
        if sorted(used) != [i for i, m in enumerate(marked) if m is not messages[i]]:
            log.warning("the chat template rewrites message text; encoding the rendered prompt as a whole")
            return self.encode(self.render_chat(messages, add_generation_prompt, tools))
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k % 2 == 0:
                ids += self.encode(piece) if piece else []
            else:
                ids += self.encode_text(messages[int(piece)]["content"])
        return ids

    def encode_text(self, text: str) -> list[int]:
        """text -> token ids with every special-token string encoded as plain text (message content)."""
        if not text:
            return []
        return self._plain.encode_batch([text], add_special_tokens=False)[0].ids if len(text) > LONG_TEXT_CHARS \
            else self._plain.encode(text, add_special_tokens=False).ids

    def detokenizer(self, skip_special_tokens: bool = True) -> "IncrementalDetokenizer":
        return IncrementalDetokenizer(self, skip_special_tokens)


class IncrementalDetokenizer:
    """Turns a growing id list into text deltas that never split a UTF-8 character.

    Decodes a short window ``ids[prefix:]`` and compares with ``ids[prefix:read]`` (the text already
    emitted for that window); text ending in U+FFFD is held back until the next id completes it.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tok, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        self.text = ""

    def add(self, new_ids: list[int]) -> str:
        """Append ids; return the newly printable text (possibly '')."""
        self.ids.extend(new_ids)
        prev = self.tok.decode(self.ids[self.prefix:self.read], self.skip)
        full = self.tok.decode(self.ids[self.prefix:], self.skip)
        if len(full) <= len(prev) or full.endswith("\ufffd"):
            return ""
        delta = full[len(prev):]
        self.prefix, self.read = self.read, len(self.ids)
        self.text += delta
        return delta

    def flush(self) -> str:
        """At the end of a stream: whatever is still held back (a dangling partial character)."""
        full = self.tok.decode(self.ids[self.prefix:], self.skip)
        prev = self.tok.decode(self.ids[self.prefix:self.read], self.skip)
        delta = full[len(prev):] if len(full) > len(prev) else ""
        self.read = len(self.ids)
        self.text += delta
        return delta
