"""Structured outputs: compile a request's ``StructuredOutputs`` into a token-level grammar matcher, build its
allowed-token masks off the critical path and apply them on the device as a bitmask.

The grammar engine is **llguidance** (PyPI ``llguidance``; Microsoft's Rust engine, also a vLLM backend). Chosen
over xgrammar because it installs as a dependency-free abi3 wheel (xgrammar pulls its own torch, transformers and
Triton requirements besides ``apache-tvm-ffi``, which fights the pinned torch 2.13.0+cpu), it compiles
JSON schema, regex, Lark grammars (GBNF converted) with no per-schema precomputation over the vocabulary (compile
is milliseconds, so the LRU below rarely matters for latency), it reports schema errors as messages we can put
in a 400, and its matcher offers what diffusion decoding needs: ``compute_ff_tokens`` (grammar-forced tokens,
committed without a forward), ``validate_tokens`` (how many of the model's proposals for the next positions are
a valid continuation, without consuming them) and masks written straight into a tensor with the GIL released.

How the engine uses it (the commit rule itself is ``commit_constrained.constrained_commits``):

- **compile** (``GrammarCompiler.compile``): once per distinct constraint (an LRU of ``CACHE_SIZE`` matchers;
  each request gets a ``deep_copy``), bounded by llguidance's fuel limits and by ``COMPILE_TIMEOUT_S`` of wall
  time (the compile runs on a worker thread; past the limit the request is refused). Errors are
  ``GrammarError`` naming the problem (the engine turns them into ``RequestRejected``, the API into a 400).
- **force** (``GrammarState.forced``): before a step, tokens the grammar allows alone (braces, quotes, keys in a
  fixed order, the rest of an enum value once its prefix is chosen) are committed at the leftmost masked
  positions with no forward; once the grammar can only end, the end token fills the rest of the canvas.
- **mask** (``MaskJob``): when the step's inputs are packed, a worker thread starts filling each constrained
  sequence's bitmask ``[G, ceil(V/32)] int32`` for its leftmost masked position (llguidance releases the GIL),
  while the main thread launches the forward; the logits stage waits for it, copies it to the device and sets
  the disallowed logits to −inf there. What overlaps: mask computation with the forward (and, on CUDA, the host
  side of the launch). What does not: forcing tokens (before packing) and verifying the accepted run (after
  the step's one device -> host copy), both microseconds per token.
- Requests without a constraint pay nothing: no matcher, no mask job, no extra copy (each hook checks
  ``seq.grammar is None`` and does nothing else).
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING

import llguidance
import torch
from llguidance.gbnf_to_lark import gbnf_to_lark

from unmask.server.engine.constraint import StructuredOutputs

if TYPE_CHECKING:
    from unmask.server.engine.sequence import Sequence
    from unmask.server.tokenizer import Tokenizer

log = logging.getLogger("unmask.structured")
CACHE_SIZE = 256
"""Compiled constraints kept (least recently used evicted)."""
COMPILE_TIMEOUT_S = 10.0
"""Longest a constraint may take to compile before the request is refused."""
LIMITS = dict(initial_lexer_fuel=1_000_000, step_lexer_fuel=200_000, step_max_items=50_000,
              max_grammar_size=500_000, max_lexer_states=250_000)
"""llguidance's resource limits (its defaults, stated here so they are the project's choice): they bound a
compile and each mask computation whatever the schema."""
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
"""JSON is compact (no optional whitespace): more forced tokens, and a weak model cannot pad with spaces."""


class GrammarError(ValueError):
    """A constraint cannot be compiled (invalid or unsupported schema, regex or grammar); the message says why."""


@dataclasses.dataclass
class GrammarStats:
    """Counters over all constrained sequences (benchmarks read them from ``Engine.grammars``)."""
    forced_tokens: int = 0
    """Answer tokens committed because the grammar forced them (no forward)."""
    end_tokens: int = 0
    """End tokens that filled the canvas after a completed grammar (no forward)."""
    sampled_tokens: int = 0
    """Tokens of constrained sequences committed from a forward's proposals."""
    rejected_proposals: int = 0
    """Runs cut short because the next proposal was not a valid continuation."""
    sequence_steps: int = 0
    """Constrained sequences' steps that ran a forward."""
    mask_s: float = 0.0
    """Seconds spent filling bitmasks (on the worker thread)."""
    host_s: float = 0.0
    """Seconds on the step's critical path: forcing, waiting for masks, verifying runs."""
    steps: int = 0
    """Steps that had at least one constrained sequence."""


def grammar_text(spec: StructuredOutputs) -> str:
    """The llguidance grammar (its JSON form) of ``spec``. Raises GrammarError for text that cannot be one."""
    if spec.json is not None or spec.json_object:
        schema = spec.json if spec.json is not None else '{"type": "object"}'
        options = dict(JSON_OPTIONS, lenient=not spec.strict)
        try:
            return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=options)
        except ValueError as exc:
            raise GrammarError(f"the JSON schema is not valid: {exc}") from None
    if spec.regex is not None:
        return llguidance.LLMatcher.grammar_from_regex(spec.regex)
    if spec.choice is not None:
        alternatives = " | ".join(_lark_string(c) for c in spec.choice)
        return llguidance.LLMatcher.grammar_from_lark(f"start: {alternatives}\n")
    lark = spec.grammar
    if "::=" in lark:  # GBNF (llama.cpp / xgrammar EBNF): llguidance converts it
        try:
            lark = gbnf_to_lark(lark)
        except Exception as exc:  # noqa: BLE001 - the converter raises plain exceptions on bad input
            raise GrammarError(f"the GBNF grammar is not valid: {exc}") from None
    return llguidance.LLMatcher.grammar_from_lark(lark)


def _lark_string(text: str) -> str:
    """text as a Lark string literal (escapes for backslash, quote and control characters)."""
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class GrammarCompiler:
    """One per engine: the tokenizer as llguidance sees it, the compile LRU and the mask worker thread."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids: tuple[int, ...],
                 cache_size: int = CACHE_SIZE, timeout_s: float = COMPILE_TIMEOUT_S):
        self.vocab_size, self.end_token, self.timeout_s = vocab_size, stop_ids[0], timeout_s
        self.lltok = grammar_tokenizer(tokenizer, vocab_size, stop_ids)
        self.limits = llguidance.LLParserLimits(**LIMITS)
        self.cache_size = cache_size
        self._cache: collections.OrderedDict[StructuredOutputs, llguidance.LLMatcher] = collections.OrderedDict()
        self._lock = threading.Lock()
        # separate threads, so a slow compile (API side) never delays a step's masks (engine side)
        self._compile_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="unmask-grammar-compile")
        self._mask_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="unmask-grammar-mask")
        self.mask_words = (vocab_size + 31) // 32
        self.stats = GrammarStats()

    def compile(self, spec: StructuredOutputs) -> llguidance.LLMatcher:
        """The compiled matcher of ``spec`` in its start state (cached; do not advance it: ``state`` copies).
        Raises GrammarError naming the problem, or when compiling takes over ``timeout_s``."""
        with self._lock:
            hit = self._cache.get(spec)
            if hit is not None:
                self._cache.move_to_end(spec)
                return hit
        text = grammar_text(spec)
        future = self._compile_pool.submit(llguidance.LLMatcher, self.lltok, text, log_level=0, limits=self.limits)
        try:
            matcher = future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            raise GrammarError(f"the {spec.kind} constraint took over {self.timeout_s:g} s to compile; "
                               "simplify it") from None
        if matcher.is_error():
            raise GrammarError(f"the {spec.kind} constraint cannot be compiled: {_first_line(matcher.get_error())}")
        with self._lock:
            self._cache[spec] = matcher
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return matcher

    def state(self, spec: StructuredOutputs) -> GrammarState:
        """A fresh matcher for one sequence."""
        return GrammarState(self.compile(spec).deep_copy(), self)

    def start_masks(self, states: list[GrammarState]) -> concurrent.futures.Future:
        """Fill one bitmask row per state on the worker thread -> a future of [G, ceil(V/32)] int32 (CPU)."""
        return self._mask_pool.submit(self._fill, states)

    def _fill(self, states: list[GrammarState]) -> torch.Tensor:
        t0 = time.perf_counter()
        mask = torch.empty(len(states), self.mask_words, dtype=torch.int32)  # [G, V/32]
        row_bytes = self.mask_words * 4
        for g, st in enumerate(states):
            st.matcher.unsafe_compute_mask_ptr(mask[g].data_ptr(), row_bytes)
        self.stats.mask_s += time.perf_counter() - t0
        return mask


def grammar_tokenizer(tokenizer: Tokenizer, vocab_size: int, stop_ids: tuple[int, ...]) -> llguidance.LLTokenizer:
    """The tokenizer as llguidance sees it: built from ``tokenizer.json`` (byte-level BPE and the other models it
    reads), else from each token's decoded text (tokenizers whose decoder it does not know, such as word-level
    ones). Raises ValueError when neither works."""
    try:
        return llguidance.LLTokenizer(tokenizer.backend_json(), n_vocab=vocab_size, eos_token=list(stop_ids))
    except ValueError:
        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_TokenTable(tokenizer, vocab_size, stop_ids)),
                                      n_vocab=vocab_size, eos_token=list(stop_ids))


class _TokenTable:
    """What ``llguidance.TokenizerWrapper`` reads: each id's bytes (its decoded text), the special ids, encode."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids: tuple[int, ...]):
        n = tokenizer.vocab_size
        self.tokens = [tokenizer.decode([i], skip_special_tokens=False).encode() if i < n else b"" for i in
                       range(vocab_size)]
        self.special_token_ids = sorted(set(tokenizer.special_ids) | set(range(n, vocab_size)))
        self.eos_token_id, self.bos_token_id = stop_ids[0], None
        self._encode = tokenizer.encode

    def __call__(self, text: str) -> list[int]:
        return self._encode(text)


def _first_line(message: str, limit: int = 400) -> str:
    """A grammar engine message on one line (its parts joined), at most ``limit`` characters."""
    text = " ".join(line.strip() for line in message.strip().splitlines() if line.strip().strip("^"))
    return (text[:limit] + "…" if len(text) > limit else text) or "unknown grammar error"


class GrammarState:
    """One constrained sequence's matcher, advanced over exactly the tokens committed so far (its canvas is
    always committed prefix + masks, since constrained commits are contiguous from the leftmost mask)."""

    def __init__(self, matcher: llguidance.LLMatcher, compiler: GrammarCompiler):
        self.matcher, self.compiler = matcher, compiler

    @property
    def end_token(self) -> int:
        """The token that fills the canvas once the grammar is complete (the model's EOS)."""
        return self.compiler.end_token

    def forced(self) -> list[int]:
        """Tokens the grammar allows alone from here (may be empty); [end_token] once it can only end."""
        if self.matcher.is_stopped():
            return [self.end_token]
        return self.matcher.compute_ff_tokens()

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many leading ``tokens`` are a valid continuation (nothing consumed)."""
        return self.matcher.validate_tokens(tokens)

    def consume(self, tokens: list[int]) -> None:
        """Advance over committed tokens (they were validated). Should the matcher still refuse them, it stays in
        its error state, which counts as ended: this answer is closed, the step and its batch go on."""
        if tokens and not self.matcher.consume_tokens(tokens):
            log.warning("grammar matcher refused committed tokens; ending the answer: %s", self.matcher.get_error())

    def ended(self) -> bool:
        """The grammar consumed its end token (or can take nothing more)."""
        return self.matcher.is_stopped()

    def first_allowed(self) -> int:
        """The lowest token id the grammar allows next (progress when every proposal was refused)."""
        bits = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.uint8)  # [V/8]
        set_bytes = bits.nonzero()
        if set_bytes.numel() == 0:
            return self.end_token
        i = int(set_bytes[0, 0])
        return i * 8 + (int(bits[i]) & -int(bits[i])).bit_length() - 1


class MaskJob:
    """The step's grammar masks: logit rows [G] (one per constrained sequence: its leftmost masked position)
    and the future bitmask being filled on the worker thread."""

    def __init__(self, rows: list[int], states: list[GrammarState], device: torch.device):
        self.rows = torch.tensor(rows, dtype=torch.int64, device=device)  # [G]
        self.states, self.device = states, device
        self.compiler = states[0].compiler
        self._future = self.compiler.start_masks(states)
        self.host_mask: torch.Tensor | None = None

    def apply(self, logits: torch.Tensor) -> None:
        """logits [M, V] (in place): −inf on every token the grammar does not allow at each job row."""
        t0 = time.perf_counter()
        self.host_mask = self._future.result()  # [G, V/32] int32, CPU
        mask = self.host_mask.to(self.device, non_blocking=True)
        self.compiler.stats.host_s += time.perf_counter() - t0
        apply_bitmask(logits, self.rows, mask)


def apply_bitmask(logits: torch.Tensor, rows: torch.Tensor, bitmask: torch.Tensor) -> None:
    """logits [M, V] (in place); rows [G] int64; bitmask [G, ceil(V/32)] int32, bit j of word w = token 32w + j
    allowed. Disallowed tokens of those rows become −inf (on the logits' device; no host sync)."""
    v = logits.shape[1]
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)  # [32]
    allowed = ((bitmask[:, :, None] >> shifts) & 1).bool().flatten(1)[:, :v]  # [G, V]
    logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))


def mask_job(seqs: list[Sequence], slots: list[torch.Tensor], device: torch.device) -> MaskJob | None:
    """The step's MaskJob for seqs with their logit rows' canvas positions slots[b] (rows concatenated in this
    order), or None when no sequence is constrained. Each constrained sequence's first row is its leftmost
    masked position, the one its matcher's mask is for."""
    if all(s.grammar is None for s in seqs):
        return None
    rows, states, start = [], [], 0
    for seq, pos in zip(seqs, slots):
        if seq.grammar is not None and pos.numel():
            rows.append(start)
            states.append(seq.grammar)
        start += pos.numel()
    return MaskJob(rows, states, device) if rows else None
