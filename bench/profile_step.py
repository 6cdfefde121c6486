"""Where the time of one LoRA training step goes: the tutorial recipe vs tunesmith's levers.

Profiles a few optimizer-free forward+backward passes of SmolLM2-135M-Instruct on a padded
batch of 2 real records with torch.profiler and prints the top operators by CPU time, for:
fp32 + full logits + padding + gradient checkpointing (tutorial), and tunesmith's defaults: bf16
autocast, packed sequences without padding, label-only fused cross-entropy, frozen weights stored
in bf16, and LoRA dropout masks drawn with rand >= p.

    .venv/bin/python bench/profile_step.py > bench/results/profile_step.txt
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq

from tunesmith.data import load_records
from tunesmith.modeling import attach_lora, load_model, load_tokenizer, resolve_source
from tunesmith.templates import ChatFormat
from tunesmith.training.fastloss import causal_lm_loss
from tunesmith.training.levers import store_frozen_in_bf16, use_fast_dropout

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "huanhuan.json"
if not DATA.is_file():
    DATA = REPO / "examples" / "data" / "zhenhuan_roleplay.json"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    src = resolve_source("smollm2-135m-instruct")
    tok = load_tokenizer(src.path)
    fmt = ChatFormat(tok)
    convs = load_records(DATA, system_prompt="现在你要扮演皇帝身边的女人--甄嬛")[:8]
    feats = [fmt.encode(c, 384) for c in convs]
    coll = DataCollatorForSeq2Seq(tok, padding=True)
    batches = [
        coll(
            [
                {"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
                for e in pair
            ]
        )
        for pair in (feats[0:2], feats[2:4], feats[4:6], feats[6:8])
    ]
    model = attach_lora(load_model(src.path), 8, 32, 0.1, TARGETS)
    model.train()
    cases = {
        "tutorial: fp32, padded, full logits, checkpointing": dict(bf16=False, fast=False, ckpt=True),
        "fp32, padded, full logits, no checkpointing": dict(bf16=False, fast=False, ckpt=False),
        "bf16 autocast, padded, full logits": dict(bf16=True, fast=False, ckpt=False),
        "bf16, packed, label-only logits": dict(bf16=True, fast=True, ckpt=False),
        "tunesmith: bf16, packed, label-only, frozen bf16, fast dropout": dict(
            bf16=True, fast=True, ckpt=False, levers=True
        ),
    }
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    for name, c in cases.items():
        if c["ckpt"]:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        if c.get("levers"):  # the last case: these change the model in place
            store_frozen_in_bf16(model)
            use_fast_dropout(model)

        def step(b: dict, c: dict = c) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c["bf16"]):
                loss = causal_lm_loss(model, b) if c["fast"] else model(**b).loss
            loss.backward()

        step(batches[0])  # warm-up
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for b in batches:
                step(b)
        elapsed = time.perf_counter() - t0
        model.zero_grad()
        print(f"\n=== {name}: {tokens / elapsed:.0f} non-padding tokens/s (under the profiler) ===")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=40))
    print(json.dumps({"batches": len(batches), "non_padding_tokens": tokens}))


if __name__ == "__main__":
    main()
