"""Micro-batching: concurrent requests gathered into one batched ``generate`` with one mix
per row, each row's tokens routed to its own request as they are generated.

The rule for sharing a batch (:meth:`Job.shares`), so that every answer is token-identical
to serving its request alone:

- greedy requests with the same decoding share one (their ``max_tokens`` may differ: the batch
  generates up to the largest, each row ends at its own); a sampled request is always served
  alone, since one random stream draws every row's tokens and its seed must give its answer
  whatever else runs;
- rows must ask for the same query guidance (one second pass runs per ``generate``) and be
  steered at the same positions with the same schedule (one set of hooks), unless a row adds
  nothing (a plain request shares with anything);
- every row's prompt plus the batch's new tokens must fit the model's context.

A row ends (its response completes, its stream closes) at the end-of-sequence token, its own
``max_tokens`` or one of its stop strings, without waiting for the batch; ``generate`` then
feeds it padding until every row has ended. Requests arriving meanwhile wait for the next
batch: the running one is never joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from emovec._placement import Schedule
from emovec.generation import Decoding
from emovec.server.options import ServerOptions
from emovec.server.protocol import APIError

__all__ = ["Event", "Job", "RowRouter", "Scheduler"]

_log = logging.getLogger("emovec.server")

# What a request's queue receives: ("delta", text), ("done", finish_reason, content,
# completion_tokens) or ("error", APIError).
Event = tuple[Any, ...]


@dataclass(eq=False)
class Job:
    """One admitted request: its row of a batch and the queue its answer goes to.

    Attributes:
        strengths: Emotion → α (only non-zero ones), the row's mix.
        conversation: The conversation as sent (query guidance reads it without its
            question).
        prompt: The prompt's token ids, as the bank's recipe asks.
        decoding: How the row decodes (``max_new_tokens``: its own ``max_tokens``).
        query_guidance: The query guidance its mix asks for, if any.
        placed: The positions and schedule its mix is steered with; ``None``: it adds nothing.
        stops: Its stop strings.
        stream: Whether the request reads pieces as they come.
        context: The model's context length, if it declares one.
        events: Where its answer goes (read in the event loop).
        loop: The event loop its request runs in.
        cancelled: Set when the client went away: the row ends at the next token.
        arrived: When it was admitted (the loop's clock).
    """

    strengths: dict[str, float]
    conversation: list[dict[str, str]]
    prompt: list[int]
    decoding: Decoding
    query_guidance: float | None
    placed: tuple[str, Schedule | None] | None
    stops: tuple[str, ...]
    stream: bool
    context: int | None
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = 0.0
    on_finish: Callable[[Job], None] | None = None

    @property
    def max_tokens(self) -> int:
        """The most new tokens the request may get."""
        return self.decoding.max_new_tokens

    def shares(self, batch: Sequence[Job]) -> bool:
        """Whether this job can join ``batch`` with every row's answer unchanged (see the
        module docstring)."""
        if self.decoding.do_sample or any(job.decoding.do_sample for job in batch):
            return False
        alike = replace(self.decoding, max_new_tokens=1)
        if any(replace(job.decoding, max_new_tokens=1) != alike for job in batch):
            return False
        if any(job.query_guidance != self.query_guidance for job in batch):
            return False
        placed = {job.placed for job in [*batch, self] if job.placed is not None}
        if len(placed) > 1:
            return False
        new_tokens = max(job.max_tokens for job in [*batch, self])
        return self.context is None or all(
            len(job.prompt) + new_tokens <= self.context for job in [*batch, self]
        )

    def emit(self, event: Event) -> None:
        """Hand ``event`` to the request (from any thread); a final one ("done", "error")
        also releases the request's place in the queue."""
        final = event[0] != "delta"

        def deliver() -> None:
            self.events.put_nowait(event)
            if final and self.on_finish is not None:
                self.on_finish(self)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(deliver)


class _Row:
    """One row's answer as it is generated: its tokens, its text, when it ends."""

    def __init__(self, job: Job, decode: Callable[[list[int]], str], eos: set[int]) -> None:
        self.job, self._decode, self._eos = job, decode, eos
        self.tokens: list[int] = []
        self.done = False
        self._sent = ""
        self._hold = max((len(s) for s in job.stops), default=1) - 1

    def ended(self) -> bool:
        """Whether ``generate`` may stop this row (ended, or its client went away)."""
        return self.done or self.job.cancelled.is_set()

    def feed(self, token: int) -> None:
        """The row's next token."""
        if self.done:
            return
        if self.job.cancelled.is_set():
            self.done = True
            self.job.emit(("done", "cancelled", "", len(self.tokens)))
            return
        if token in self._eos:
            self.finish("stop")
            return
        self.tokens.append(token)
        if not (self.job.stream or self.job.stops):  # the text is needed only at the end
            if len(self.tokens) >= self.job.max_tokens:
                self.finish("length")
            return
        text = self._decode(self.tokens).lstrip()
        found = [i for i in (text.find(stop) for stop in self.job.stops) if i >= 0]
        if found:
            self.finish("stop", text[: min(found)])
        elif len(self.tokens) >= self.job.max_tokens:
            self.finish("length", text)
        elif self.job.stream:
            self._send(text)

    def _send(self, text: str) -> None:
        """Stream what is settled: not trailing spaces (the answer is stripped), not a
        character still being spelt, not what may be the start of a stop string."""
        ready = text.rstrip()
        if ready.endswith("\ufffd"):
            return
        ready = ready[: max(len(ready) - self._hold, 0)]
        if len(ready) > len(self._sent) and ready.startswith(self._sent):
            self.job.emit(("delta", ready[len(self._sent) :]))
            self._sent = ready

    def finish(self, reason: str, text: str | None = None) -> None:
        """End the row: the rest of its text to a stream, then the answer."""
        if self.done:
            return
        self.done = True
        content = (self._decode(self.tokens).lstrip() if text is None else text).rstrip()
        if self.job.stream and len(content) > len(self._sent):
            self.job.emit(("delta", content[len(self._sent) :]))
        self.job.emit(("done", reason, content, len(self.tokens)))

    def fail(self, error: APIError) -> None:
        """End the row with an error (generation failed)."""
        if not self.done:
            self.done = True
            self.job.emit(("error", error))


class RowRouter(BaseStreamer):
    """A streamer for one batched ``generate``: routes each step's tokens to the rows'
    requests, each row ending on its own (:class:`_Row`); :attr:`stopping` lets
    ``generate`` stop the ended rows (and the whole call once every row has ended).

    Args:
        jobs: The batch's requests, one per row, in the order of the prompt rows.
        decode: Token ids to text (special tokens skipped).
        eos: The end-of-sequence ids ``generate`` stops at.
    """

    def __init__(
        self, jobs: Sequence[Job], decode: Callable[[list[int]], str], eos: set[int]
    ) -> None:
        self.rows = [_Row(job, decode, eos) for job in jobs]
        self._prompt = True
        self.stopping = _RowsEnded(self.rows)

    def put(self, value: torch.Tensor) -> None:
        """One step's tokens, one per row (the first call: the prompt, skipped)."""
        if self._prompt:
            self._prompt = False
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist(), strict=True):
            row.feed(int(token))

    def end(self) -> None:
        """``generate`` is done: any row still open ran out of new tokens."""
        for row in self.rows:
            row.finish("length")

    def fail(self, error: APIError) -> None:
        """Generation failed: every open row gets the error."""
        for row in self.rows:
            row.fail(error)


class _RowsEnded(StoppingCriteria):
    """Per row: whether it has ended (``generate`` then pads it)."""

    def __init__(self, rows: Sequence[_Row]) -> None:
        self._rows = rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **_: Any) -> Any:
        return torch.tensor([row.ended() for row in self._rows], device=input_ids.device)


class Scheduler:
    """Gathers admitted requests into batches and runs them one after another in a worker
    thread, so the event loop keeps accepting requests meanwhile.

    A batch starts ``options.batch_window`` seconds after its oldest request arrived, or as
    soon as ``options.max_batch`` requests wait; it takes the oldest request and the waiting
    ones that can share its batch (:meth:`Job.shares`), oldest first.

    Args:
        run: Generates one batch (called in the worker thread); it must end every row.
        options: The batching settings and limits.

    Attributes:
        batch_sizes: The sizes of the latest batches, oldest first (for tests and monitoring;
            the last 1024).
    """

    def __init__(self, run: Callable[[list[Job]], None], options: ServerOptions) -> None:
        self._run, self._options = run, options
        self._pending: list[Job] = []
        self._admitted: set[Job] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self.batch_sizes: deque[int] = deque(maxlen=1024)

    def start(self) -> None:
        """Start gathering (in the running event loop)."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emovec-generate")
        self._task = asyncio.get_running_loop().create_task(self._gather())

    def submit(self, job: Job) -> None:
        """Admit ``job`` to the next batches.

        Raises:
            APIError: 429 when ``options.max_queue`` requests are admitted already, 503
                while the server shuts down.
        """
        if self._closing or self._task is None:
            raise APIError(
                503, "The server is shutting down.", type="server_error", code="shutting_down"
            )
        if len(self._admitted) >= self._options.max_queue:
            raise APIError(
                429,
                f"The server has {self._options.max_queue} requests in hand; retry shortly.",
                type="rate_limit_error",
                code="rate_limit_exceeded",
            )
        job.arrived = job.loop.time()
        job.on_finish = self._finished
        self._admitted.add(job)
        self._pending.append(job)
        self._wake.set()

    def withdraw(self, job: Job) -> None:
        """The request's client went away: drop it if it still waits, else end its row at
        the next token."""
        job.cancelled.set()
        if job in self._pending:
            self._pending.remove(job)
            self._finished(job)

    def _finished(self, job: Job) -> None:
        self._admitted.discard(job)

    async def _gather(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            deadline = self._pending[0].arrived + self._options.batch_window
            while len(self._pending) < self._options.max_batch:
                left = deadline - loop.time()
                if left <= 0 or not self._pending:
                    break
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            if not self._pending:  # every waiting request was withdrawn
                continue
            batch = self._take()
            self.batch_sizes.append(len(batch))
            try:
                await loop.run_in_executor(self._executor, self._run, batch)
            except Exception:  # run ends every row itself; this is a last resort
                _log.exception("a batch failed")
                failed = APIError(500, "Generation failed.", type="server_error")
                for job in batch:
                    job.emit(("error", failed))

    def _take(self) -> list[Job]:
        """The oldest waiting job and those that can share its batch."""
        batch = [self._pending[0]]
        for job in self._pending[1:]:
            if len(batch) == self._options.max_batch:
                break
            if job.shares(batch):
                batch.append(job)
        self._pending = [job for job in self._pending if job not in batch]
        return batch

    async def close(self) -> None:
        """Stop: requests still waiting get 503, the running batch ends (its rows' clients
        are gone by now: the HTTP server drains requests before it closes the app)."""
        self._closing = True
        for job in self._pending:
            job.emit(("error", APIError(503, "The server shut down.", type="server_error")))
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            for job in self._admitted:
                job.cancelled.set()
            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
