"""Training progress a user can trust: steps, tokens/s and ETA, and a warning when it is slow.

On a terminal a tqdm bar; otherwise (logs, CI, nohup) a plain line every ``interval`` seconds.
When ``train.expected_seconds`` is set (the quickstart sets the README's figure) and the measured
pace projects more than three times that, one warning names the likely causes, with what was
measured: other processes on the cores, fewer threads than cores, fp32 where bf16 was slower.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ..logs import get_logger

log = get_logger(__name__)

SLOW_FACTOR = 3.0


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def slow_causes(dtype: str) -> list[str]:
    """What usually makes a CPU run slow, as measured now."""
    import torch

    from ..runtime.hardware import busy_cores, usable_cores

    causes = []
    busy, usable, threads = busy_cores(), usable_cores(), torch.get_num_threads()
    if busy:
        causes.append(f"{busy} other process(es) running on this machine's {usable} core(s)")
    if threads < usable:
        causes.append(f"{threads} thread(s) for {usable} core(s) (train.threads)")
    if dtype == "float32":
        causes.append("float32 compute: bf16 measured no faster here (see `tunesmith doctor`)")
    return causes or ["a slower CPU than the one the figure was measured on"]


def progress_callback(dtype: str, expected_s: float | None, interval: float = 30.0) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Any = None
            self.warned = False

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0, self.step0 = time.perf_counter(), state.global_step
            self.tokens0, self.last = state.num_input_tokens_seen, 0.0
            if state.is_world_process_zero and sys.stderr.isatty():
                from tqdm.auto import tqdm

                self.bar = tqdm(
                    total=state.max_steps, initial=state.global_step, unit="step", desc="training"
                )

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if not state.is_world_process_zero:
                return
            elapsed = time.perf_counter() - self.t0
            done = state.global_step - self.step0
            tps = (state.num_input_tokens_seen - self.tokens0) / elapsed if elapsed > 0 else 0.0
            eta = elapsed / done * (state.max_steps - state.global_step) if done else 0.0
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)
                self.bar.set_postfix_str(f"{tps:,.0f} tokens/s", refresh=False)
            elif elapsed - self.last >= interval or state.global_step == state.max_steps:
                self.last = elapsed
                log.info(
                    "step %d/%d (%d%%) · %s tokens/s · %.1f s/step · ETA %s",
                    state.global_step,
                    state.max_steps,
                    100 * state.global_step // max(1, state.max_steps),
                    f"{tps:,.0f}",
                    elapsed / max(1, done),
                    _clock(eta),
                )
            if expected_s and not self.warned and (done >= 5 or elapsed >= 60):
                projected = elapsed + eta
                if projected > SLOW_FACTOR * expected_s:
                    self.warned = True
                    log.warning(
                        "this run is on pace for %s, more than %.0fx the %s expected "
                        "(train.expected_seconds). Likely causes: %s",
                        _clock(projected),
                        SLOW_FACTOR,
                        _clock(expected_s),
                        "; ".join(slow_causes(dtype)),
                    )

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.bar is not None:
                self.bar.close()

    return Progress()
