"""Scheduler: which sequences take a step this iteration, and what each step changed.

NOTE (scheduling model). There is no prefill/decode split. Every running sequence has masked positions
in its current block, and each engine iteration runs **one denoising step** for every scheduled
sequence, so requests with different steps, block sizes, lengths, thresholds, temperatures and cache
modes advance together and join or leave at step boundaries. A cached sequence's step is a refresh
(full canvas, rebuilds its cache) at each block start and a block step otherwise; both kinds mix in
one forward. Budgets per iteration: ``max_num_seqs`` and ``max_num_batched_tokens``; when the budget
cannot take every running sequence, the least recently stepped go first, so no request starves.
Admission is FIFO and waits while a request's worst-case cache pages are not free.
"""
from __future__ import annotations

import collections
import time

import numpy as np

from unmask.server.config import SchedulerConfig
from unmask.server.engine.batch import Batch, StepOutput, StepResult
from unmask.server.engine.kv_cache import KVCacheManager
from unmask.server.engine.commit_editing import editing_block_finished
from unmask.server.engine.commit_policy import block_finished, finishes_on_stop
from unmask.server.engine.sequence import Sequence, SeqStatus, StepKind


def step_cost(seq: Sequence, kind: StepKind) -> int:
    """Tokens this sequence feeds to the model for one step of ``kind``."""
    lo, hi = seq.fed_range(kind)
    return (hi - lo) * (2 if seq.params.cfg_scale > 0 else 1)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager | None):
        self.config, self.kv = config, kv
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self._last_step: dict[str, int] = {}
        self._iteration = 0

    def add(self, seq: Sequence) -> None:
        """Queue a validated sequence. Raises ValueError if it can never be admitted."""
        if seq.uses_cache and (self.kv is None or not self.kv.can_ever_fit(seq.length)):
            cap = 0 if self.kv is None else self.kv.num_pages * self.kv.page_size
            raise ValueError(f"the cache holds {cap} tokens; this request needs {seq.length} "
                             f"(raise --kv-cache-memory or use cache='none')")
        self.waiting.append(seq)
        self._last_step[seq.request_id] = self._iteration

    def abort(self, request_id: str) -> StepOutput | None:
        """Remove a request wherever it is; frees its pages at once. None if it is unknown or done."""
        for seq in list(self.waiting) + self.running:
            if seq.request_id == request_id:
                self._finish(seq, "abort")
                return self._output(seq, ())
        return None

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Batch | None:
        """Pick this iteration's sequences: running and waiting requests compete in one order, least
        recently served first (a waiting request counts from its arrival), so neither a long request nor
        a stream of newcomers starves anyone. Waiting requests are admitted FIFO while slots and cache
        pages allow; the first pick always runs, even alone over budget."""
        budget = self.config.max_num_batched_tokens
        picked, kinds, used = [], [], 0
        order = sorted([(self._last_step[s.request_id], 0, i, s) for i, s in enumerate(self.running)] +
                       [(self._last_step[s.request_id], 1, i, s) for i, s in enumerate(self.waiting)],
                       key=lambda t: t[:3])
        admitting = True
        for _, is_waiting, _, seq in order:
            kind = StepKind.REFRESH if is_waiting else seq.next_kind()
            cost = step_cost(seq, kind)
            if picked and used + cost > budget:
                if is_waiting:
                    admitting = False
                continue
            if is_waiting and not (admitting and seq is self.waiting[0] and self._admit(seq)):
                admitting = False
                continue
            picked.append(seq), kinds.append(kind)
            used += cost
        if not picked:
            return None
        self._iteration += 1
        for seq in picked:
            self._last_step[seq.request_id] = self._iteration
        return Batch(seqs=picked, kinds=kinds, num_tokens=used)

    def _admit(self, seq: Sequence) -> bool:
        """Move the head of the waiting queue to running if a slot and its cache pages are free."""
        if len(self.running) >= self.config.max_num_seqs:
            return False
        if seq.uses_cache:
            pages = self.kv.allocate(seq.length)
            if pages is None:
                return False
            seq.pages = pages
        self.waiting.popleft()
        seq.status = SeqStatus.RUNNING
        seq.scheduled_at = time.monotonic()
        self.running.append(seq)
        return True

    def update(self, batch: Batch, result: StepResult) -> list[StepOutput]:
        """Apply the runner's commits, advance blocks, detect finishes; one StepOutput per sequence."""
        outputs = []
        for seq, kind, (positions, tokens), ran in zip(batch.seqs, batch.kinds, result.commits, result.ran_forward):
            if seq.status is SeqStatus.FINISHED:  # aborted while the step ran
                continue
            if seq.editing is not None and not seq.masked_in_block().any():
                seq.post_steps += 1  # an edit-only step (the block had no mask at its start)
            if positions:
                seq.canvas_np[positions] = tokens
            seq.nfe += int(ran)
            seq.num_steps += 1
            if kind is StepKind.REFRESH and seq.uses_cache:
                seq.cache_valid = True
                seq.cached_upto = seq.block_start  # every earlier position was final when it was fed
            self._advance(seq, bool(positions))
            outputs.append(self._emit(seq))
        return outputs

    def fail(self, batch: Batch, error: str) -> list[StepOutput]:
        """The step raised: finish its sequences with an error output; everything else goes on."""
        outs = []
        for seq in batch.seqs:
            if seq.status is not SeqStatus.FINISHED:
                seq.error = error
                self._finish(seq, "error")
                outs.append(self._output(seq, ()))
        return outs

    def _advance(self, seq: Sequence, changed: bool) -> None:
        seq.step_in_block += 1
        masked_left = int(seq.masked_in_block().sum())
        if not (editing_block_finished(seq, masked_left, changed) if seq.editing is not None
                else block_finished(seq, masked_left)):
            return
        seq.block_idx += 1
        seq.step_in_block = seq.post_steps = 0
        seq.cache_valid = False
        if seq.block_idx < seq.num_blocks:
            seq.plan = seq.block_plan()

    def _emit(self, seq: Sequence) -> StepOutput:
        done = seq.block_idx >= seq.num_blocks
        # After the last block every position is final, including any that kept the mask token (exact mode).
        prefix = seq.gen_length if done else seq.final_prefix_len()
        # The final prefix only grows and its tokens never change, and the emitted ones hold no stop token: the
        # output so far continues with the final tokens after them, up to a stop (each step reads only those).
        new = tuple(seq.output_token_ids(prefix, start=seq.num_emitted))
        lps = None
        if seq.params.logprobs is not None:
            lo = seq.prompt_len + seq.num_emitted
            lps = tuple(seq.token_logprobs.pop(p, (0.0, [], [])) for p in range(lo, lo + len(new)))
        seq.num_emitted += len(new)
        hit_stop = seq.num_emitted < prefix  # a stop token sits in the final prefix
        stop_token = None
        if finishes_on_stop(seq.params, hit_stop, done):
            self._finish(seq, "stop")
            token = int(seq.canvas_np[seq.prompt_len + seq.num_emitted])
            stop_token = token if token in seq.params.stop_token_ids else None
        elif done:
            self._finish(seq, "length")
        return self._output(seq, new, lps, stop_token)

    def _output(self, seq: Sequence, new: tuple[int, ...], logprobs: tuple | None = None,
                stop_token: int | None = None) -> StepOutput:
        canvas = None
        if seq.request.stream_canvas:
            canvas = tuple(seq.canvas_np[seq.prompt_len:seq.gen_end].tolist())
        return StepOutput(
            request_id=seq.request_id, new_token_ids=new, finished=seq.status is SeqStatus.FINISHED,
            finish_reason=seq.finish_reason, num_prompt_tokens=seq.prompt_len, num_output_tokens=seq.num_emitted,
            new_logprobs=logprobs, stop_token=stop_token,
            nfe=seq.nfe, num_committed=int(np.count_nonzero(seq.canvas_np[seq.prompt_len:seq.gen_end] != seq.mask_id)),
            error=seq.error, canvas=canvas, scheduled_at=seq.scheduled_at,
            queued_s=None if seq.scheduled_at is None else seq.scheduled_at - seq.request.arrival_time)

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        if self.kv is not None and seq.pages:
            self.kv.free(seq.pages)
        self._last_step.pop(seq.request_id, None)
