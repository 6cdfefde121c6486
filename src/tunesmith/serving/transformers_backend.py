"""transformers backend: one worker thread batches concurrent requests into left-padded batches.

Requests queue up; the worker waits a few milliseconds for company, then runs every waiting
request whose sampling settings match the oldest one's as one ``model.generate`` call. Requests
for different adapters share a batch through PEFT's mixed-adapter inference (``adapter_names``);
a seeded request runs alone, so its seed reproduces its answer. Each row is followed token by
token (stop tokens, stop strings, token limit, repetition guard, client gone), and a row that is
done stops costing anything but its padding.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..generation import Sampling
from ..logs import get_logger
from ..runcard import read_run_card
from ..runtime.adapters import load_adapter_set
from ..runtime.chatbot import load_chatbot
from ..runtime.fullweights import holds_full_weights
from ..runtime.hardware import pick_device, pick_dtype
from .backends import BASE_NAME, Backend, Event, GenRequest, QueueFull, ServedModel
from .guard import TextTracker

log = get_logger(__name__)

BatchHook = Callable[[int, int, float], None]  # (rows, generated tokens, seconds)


@dataclass(eq=False)
class _Job:
    req: GenRequest
    sink: Callable[[Event], None]
    tracker: TextTracker
    stop_ids: frozenset[int]
    enqueued: float = field(default_factory=time.monotonic)
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False

    def push(self, token: int) -> None:
        """Take the row's next token; emit what may be released; end the row when it is done."""
        if self.cancelled:
            self.done = True
            return
        if token in self.stop_ids:
            self.finish("stop")
            return
        self.tokens.append(token)
        piece = self.tracker.update(self.req.model.decode(self.tokens))
        if self.tracker.finish:
            self.finish(self.tracker.finish, piece)
        elif len(self.tokens) >= self.req.sampling.max_new_tokens:
            self.finish("length", piece)
        elif piece:
            self.emit(Event(text=piece, completion_tokens=len(self.tokens)))

    def finish(self, reason: str, piece: str = "") -> None:
        if self.done:
            return
        self.done = True
        piece += self.tracker.close(reason)
        loop = self.tracker.loop
        self.emit(
            Event(
                text=piece,
                finish=self.tracker.finish,
                completion_tokens=len(self.tokens),
                repeated_phrase=loop.phrase if loop else None,
            )
        )

    def fail(self, message: str) -> None:
        if not self.done:
            self.done = True
            self.emit(Event(error=message, completion_tokens=len(self.tokens)))

    def emit(self, event: Event) -> None:
        try:
            self.sink(event)
        except RuntimeError:  # the client's event loop is gone (server shutting down)
            self.cancelled = True


class _JobStream:
    """The events of one queued job as an async iterator; closing it cancels the job."""

    def __init__(self, job: _Job, events: asyncio.Queue[Event]):
        self.job = job
        self.events = events
        self.ended = False

    def __aiter__(self) -> _JobStream:
        return self

    async def __anext__(self) -> Event:
        if self.ended:
            raise StopAsyncIteration
        try:
            event = await self.events.get()
        except BaseException:
            self.job.cancelled = True
            raise
        self.ended = bool(event.finish or event.error)
        return event

    async def aclose(self) -> None:
        self.job.cancelled = True  # the row stops at its next token, or never starts


def _batch_key(job: _Job, mixed: bool) -> tuple[Any, ...]:
    """Requests with equal keys can share one generate() call."""
    s = job.req.sampling
    if s.seed is not None:
        return ("seeded", id(job))  # alone, so the seed alone decides the draws
    decode = ("greedy",) if s.temperature <= 0 else (s.temperature, s.top_p, s.top_k)
    adapter = () if mixed else (job.req.model.name,)
    return (*adapter, *decode, s.repetition_penalty, job.req.ignore_eos)


class TransformersBackend(Backend):
    """Serve run directories' adapters (and the base model) with transformers + PEFT.

    Args:
        models: the served names.
        model: the PeftModel holding every adapter (or a plain model serving only the base).
        max_batch: most requests in one generate() call.
        batch_wait_ms: how long the oldest waiting request waits for others to join its batch.
        refill_wait_ms: after a batch of N rows, how long the next waits for N requests (the
            clients of the last batch coming back) before it starts with fewer.
        max_queue: waiting requests beyond which new ones get 429.
        mixed_adapters: let requests for different adapters share a batch.
    """

    def __init__(
        self,
        models: dict[str, ServedModel],
        model: Any,
        max_batch: int = 16,
        batch_wait_ms: float = 20.0,
        refill_wait_ms: float = 300.0,
        max_queue: int = 256,
        mixed_adapters: bool = True,
        on_batch: BatchHook | None = None,
    ):
        super().__init__(models)
        self.model = model
        self.max_batch = max_batch
        self.batch_wait = batch_wait_ms / 1000
        self.refill_wait = refill_wait_ms / 1000
        self._last_batch_size = 0
        self.max_queue = max_queue
        self.mixed = mixed_adapters and _mixable(model)
        self.on_batch = on_batch
        self._pending: list[_Job] = []
        self._running: list[_Job] = []
        self._last_batch_end = 0.0
        self._cv = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        # Held while a batch runs. Anyone else using ``model`` (tests, a notebook) takes it too:
        # adapter switches are model-wide state.
        self.lock = threading.Lock()

    @classmethod
    def from_runs(
        cls,
        runs: dict[str, str | Path],
        base_name: str = BASE_NAME,
        device: str = "auto",
        dtype: str | None = None,
        **kw: Any,
    ) -> TransformersBackend:
        """Load every run's adapter onto one base model; serve each by name and the base as ``base_name``.

        ``dtype`` None: as ``tunesmith chat`` (bfloat16 on CUDA, float32 on CPUs); "auto": bfloat16
        wherever the hardware computes it natively (also recent CPUs: faster batches).

        A single run with full weights is served with its base model swapped in for ``base_name``
        requests; a single merged export is served alone (it has no base model to switch to).
        """
        if dtype == "auto":
            dtype = pick_dtype("auto", pick_device(device))
        if len(runs) == 1:
            name, path = next(iter(runs.items()))
            card = read_run_card(path)
            if card.is_export or holds_full_weights(Path(path) / card.adapter):
                bot = load_chatbot(path, device=device, dtype=dtype)
                ctx = _context_len(bot.model)
                models = {name: ServedModel(name, bot, None, Path(path), ctx)}
                if not card.is_export:
                    models[base_name] = ServedModel(base_name, bot, None, Path(path), ctx, is_base=True)
                return cls(models, bot.model, **kw)
        aset = load_adapter_set(runs, device=device, dtype=dtype)
        ctx = _context_len(aset.model)
        models = {
            name: ServedModel(name, bot, bot.adapter_name, Path(runs[name]), ctx)
            for name, bot in aset.bots.items()
        }
        first = next(iter(models.values()))
        models[base_name] = ServedModel(base_name, first.bot, None, first.run_dir, ctx, is_base=True)
        return cls(models, aset.model, **kw)

    def info(self) -> dict[str, Any]:
        return {"backend": "transformers", "max_batch": self.max_batch, "mixed_adapters": self.mixed}

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tunesmith-batcher", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._cv:
            self._closing = True
            pending, self._pending = self._pending, []
            self._cv.notify_all()
        for job in pending + self._running:
            job.fail("the server is shutting down")
            job.cancelled = True  # a running batch ends at its next step
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def queue_depth(self) -> int:
        with self._cv:
            return len(self._pending)

    def submit(self, req: GenRequest, sink: Callable[[Event], None]) -> _Job:
        """Queue ``req``; its events go to ``sink`` from the worker thread. Thread-safe."""
        stop_ids = frozenset(req.stop_ids())
        job = _Job(req, sink, req.tracker(), stop_ids)
        with self._cv:
            if self._closing:
                raise QueueFull(len(self._pending))
            if len(self._pending) >= self.max_queue:
                raise QueueFull(len(self._pending))
            self._pending.append(job)
            self._cv.notify()
        self.start()
        return job

    def generate(self, req: GenRequest) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        job = self.submit(req, lambda ev: loop.call_soon_threadsafe(events.put_nowait, ev))
        return _JobStream(job, events)

    # --- the worker thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._running = batch
                with self.lock:
                    self._run(batch)
            except Exception as e:  # a failed batch fails its requests, never the server
                log.exception("generation failed for a batch of %d", len(batch))
                for job in batch:
                    job.fail(f"generation failed: {type(e).__name__}: {e}")
            finally:
                self._running = []
                self._last_batch_end = time.monotonic()
                self._last_batch_size = len(batch)

    def _next_batch(self) -> list[_Job] | None:
        with self._cv:
            while True:
                self._pending = [j for j in self._pending if not j.cancelled]
                if self._closing:
                    return None
                if not self._pending:
                    self._cv.wait()
                    continue
                # Give concurrent requests a moment to arrive, and the clients of the batch that
                # just ended time to come back (their answers ended at different moments, and a
                # busy client takes a while to send its next request): starting with only the
                # requests queued meanwhile would run a part-batch, and part-batches then
                # alternate, each as slow as a full one.
                now, waiting = time.monotonic(), len(self._pending)
                start = max(self._pending[0].enqueued, self._last_batch_end) + self.batch_wait
                refill = self._last_batch_end + self.refill_wait
                expected = min(self.max_batch, self._last_batch_size)
                if waiting < self.max_batch and (now < start or (waiting < expected and now < refill)):
                    self._cv.wait(max(start, refill if waiting < expected else start) - now)
                    continue
                key = _batch_key(self._pending[0], self.mixed)
                batch = [j for j in self._pending if _batch_key(j, self.mixed) == key][: self.max_batch]
                taken = set(map(id, batch))
                self._pending = [j for j in self._pending if id(j) not in taken]
                return batch

    def _run(self, batch: list[_Job]) -> None:
        import torch

        started = time.monotonic()
        first = batch[0].req
        tok = first.model.bot.fmt.tokenizer
        stop = sorted(set().union(*(j.stop_ids for j in batch)))
        pad = tok.pad_token_id if tok.pad_token_id is not None else (stop or [0])[0]
        width = max(len(j.req.prompt_ids) for j in batch)
        device = next(self.model.parameters()).device
        ids = torch.tensor([[pad] * (width - len(j.req.prompt_ids)) + j.req.prompt_ids for j in batch])
        mask = torch.tensor(
            [[0] * (width - len(j.req.prompt_ids)) + [1] * len(j.req.prompt_ids) for j in batch]
        )
        sampling: Sampling = first.sampling.updated(
            max_new_tokens=max(j.req.sampling.max_new_tokens for j in batch)
        )
        kwargs = sampling.generate_kwargs(stop, pad)
        kwargs["stopping_criteria"] = _criteria(batch)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        with torch.inference_mode(), self._adapters(batch, kwargs):
            self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        for job in batch:  # rows generate() stopped without our noticing (its own length limit)
            job.finish("length")
        if self.on_batch:
            self.on_batch(len(batch), sum(len(j.tokens) for j in batch), time.monotonic() - started)

    def _adapters(self, batch: list[_Job], kwargs: dict[str, Any]) -> Any:
        """Switch to the batch's adapter (or the base model), or hand PEFT one adapter per row."""
        import contextlib

        served = [j.req.model for j in batch]
        if len({m.name for m in served}) > 1:  # only when self.mixed: plain LoRA adapters
            kwargs["adapter_names"] = ["__base__" if m.is_base else m.adapter for m in served]
            return contextlib.nullcontext()
        if served[0].is_base:
            return self.model.disable_adapter()  # PeftModel, or full weights with the base swapped in
        if served[0].adapter is not None:
            self.model.set_adapter(served[0].adapter)
        return contextlib.nullcontext()


def _criteria(batch: list[_Job]) -> Any:
    """A stopping criterion that follows each row token by token and says which rows are done."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class RowWatch(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            for job, token in zip(batch, input_ids[:, -1].tolist(), strict=True):
                if not job.done:
                    job.push(token)
            return torch.tensor([j.done for j in batch], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([RowWatch()])


def _mixable(model: Any) -> bool:
    """PEFT mixes adapters in one batch for plain LoRA adapters only."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return False
    return all(c.peft_type == "LORA" and not getattr(c, "use_dora", False) for c in configs.values())


def _context_len(model: Any) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or 2048)
