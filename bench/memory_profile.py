"""Where tunesmith's training memory goes: live heap between steps, and what autograd keeps.

Trains the packaged SmolLM2-135M-Instruct with tunesmith's defaults on the first N records of
huanhuan.json (as bench/train_throughput.py does), once as configured and once with
`train.pad_to_multiple_of=0`, each in its own subprocess, and records after every optimizer step:

* the resident set size (RSS) and its peak so far;
* glibc's heap figures (``mallinfo2``): bytes in use by live allocations, and bytes held by the
  allocator but free. Live bytes that keep growing between steps are caches or leaks; free bytes
  are the high-water mark of a step that the allocator keeps for reuse.

For one micro-batch (the third) it also walks the autograd graph and adds up the tensors kept for
the backward pass (parameters excluded), by backward operation, dtype and last dimension, in KB
per token per decoder layer. Tensors saved inside custom autograd functions (dropout masks, the
fused loss's gradient) are not visible to this walk.

    .venv/bin/python bench/memory_profile.py              # 256 records, about 4 minutes
    .venv/bin/python bench/memory_profile.py --records 64
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import functools
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_throughput as tt  # noqa: E402  (same model, data, LoRA and settings)

SETTINGS = {"filled": [], "unfilled": ["train.pad_to_multiple_of=0"]}


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


@functools.cache
def _mallinfo2() -> Any:
    """glibc's ``mallinfo2``, or None where the C library has none."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


def _heap() -> dict[str, float]:
    """glibc's heap in MB: live (in use, arenas + mmapped chunks) and held free; empty elsewhere."""
    if _mallinfo2() is None:
        return {}
    m = _mallinfo2()()
    return {"live_mb": (m.uordblks + m.hblkhd) / 2**20, "held_free_mb": m.fordblks / 2**20}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _saved_for_backward(loss, model, tokens: int, layers: int) -> list[dict]:
    """Tensors the autograd graph of ``loss`` keeps (parameters excluded), grouped."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}
    groups: collections.Counter = collections.Counter()
    nodes, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in nodes:
            continue
        nodes.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                value = getattr(node, attr)
            except Exception:  # noqa: BLE001  (some saved slots raise once freed or unset)
                continue
            for t in value if isinstance(value, (tuple, list)) else [value]:
                if not hasattr(t, "untyped_storage") or t.dim() == 0:
                    continue
                ptr = t.untyped_storage().data_ptr()
                if ptr in params or ptr in seen:
                    continue
                seen[ptr] = t.untyped_storage().nbytes()
                key = (type(node).__name__, attr.removeprefix("_saved_"), str(t.dtype).removeprefix("torch."))
                groups[key + (int(t.shape[-1]),)] += seen[ptr]
        stack.extend(f for f, _ in node.next_functions)
    scale = 1024 * tokens * layers
    return [
        {"op": op, "saved": name, "dtype": dt, "last_dim": dim, "kb_per_token_layer": round(b / scale, 2)}
        for (op, name, dt, dim), b in groups.most_common()
        if b / scale >= 0.05
    ]


def worker(setting: str, data: Path, result: Path) -> None:
    from transformers import TrainerCallback

    import tunesmith.training as train
    import tunesmith.training.fastloss as fl

    steps: list[dict] = []
    saved: dict = {}
    original_loss = fl.causal_lm_loss
    calls = [0]

    def causal_lm_loss(model, inputs, *args, **kw):
        loss = original_loss(model, inputs, *args, **kw)
        calls[0] += 1
        if calls[0] == 3 and loss.requires_grad:
            tokens = int(inputs["attention_mask"].sum())
            layers = model.get_base_model().config.num_hidden_layers
            groups = _saved_for_backward(loss, model, tokens, layers)
            saved.update(
                tokens=tokens,
                total_kb_per_token_layer=round(sum(g["kb_per_token_layer"] for g in groups), 1),
                groups=groups,
            )
        return loss

    fl.causal_lm_loss = causal_lm_loss

    class Record(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            heap = {k: round(v) for k, v in _heap().items()}
            steps.append({"step": state.global_step, "rss_mb": round(_rss_mb()), **heap})

    original_run = train.run_train
    train.run_train = lambda cfg, callbacks=None: original_run(cfg, callbacks=[Record(), *(callbacks or [])])
    with tempfile.TemporaryDirectory() as tmp:
        tt.run_tunesmith(data, Path(tmp) / "run", *SETTINGS[setting])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result.write_text(
        json.dumps({"peak_rss_mb": round(peak), "steps": steps, "saved": saved}), encoding="utf-8"
    )


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "| setting | peak RSS MB | step | RSS MB | live heap MB | held free MB |",
        "|---|---|---|---|---|---|",
    ]
    for setting in SETTINGS:
        run = result[setting]
        steps = run["steps"]
        picks = sorted({0, 1, len(steps) // 4, len(steps) // 2, len(steps) - 1})
        for i in picks:
            s = steps[i]
            lines.append(
                f"| {setting} | {run['peak_rss_mb']} | {s['step']} | {s['rss_mb']} | "
                f"{s.get('live_mb', '')} | {s.get('held_free_mb', '')} |"
            )
    saved = result["filled"]["saved"]
    lines += [
        "",
        f"Kept for the backward pass, one micro-batch of {saved['tokens']} real tokens: "
        f"{saved['total_kb_per_token_layer']} KB per real token per decoder layer (autograd's own saved "
        "tensors, any filler tokens included in them)",
        "",
        "| backward op | saved | dtype | last dim | KB / token / layer |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {g['op']} | {g['saved']} | {g['dtype']} | {g['last_dim']} | {g['kb_per_token_layer']} |"
        for g in saved["groups"]
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=256)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "memory_profile.json"))
    ap.add_argument("--worker", choices=list(SETTINGS), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.data), Path(args.result))
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = tt.data_file(args.records, Path(tmp))
        for setting in SETTINGS:
            res = Path(tmp) / f"{setting}.json"
            cmd = [sys.executable, __file__, "--worker", setting, "--data", str(data), "--result", str(res)]
            subprocess.run(cmd, check=True)
            runs[setting] = json.loads(res.read_text(encoding="utf-8"))
    result = {"model": tt.MODEL, "records": args.records, **runs}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    write_markdown(result, Path(args.out).with_suffix(".md"))


if __name__ == "__main__":
    main()
