"""Train/validation split without leakage: records that share a prompt, or are near-duplicates
of each other, always land on the same side. Optional stratification by a label."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from .formats import Conversation


def _prompt_key(text: str) -> str:
    return " ".join(text.split())


def take(items: list[Any], limit: int | None = None, sample: int | None = None, seed: int = 42) -> list[Any]:
    """The first ``limit`` items, or a seeded random ``sample`` of them (in file order), or all.

    A sample larger than the data keeps everything.
    """
    if limit:
        return items[:limit]
    if sample and sample < len(items):
        keep = sorted(random.Random(seed).sample(range(len(items)), sample))
        return [items[i] for i in keep]
    return items


def leak_groups(
    prompts: list[str], texts: list[str] | None = None, near_threshold: float | None = 0.8
) -> list[list[int]]:
    """Groups of indices that must not be split: same prompt, or near-duplicate ``texts``."""
    parent = list(range(len(prompts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        parent[find(a)] = find(b)

    first: dict[str, int] = {}
    for i, p in enumerate(prompts):
        union(i, first.setdefault(_prompt_key(p), i))
    if texts is not None and near_threshold is not None and len(texts) > 1:
        from .dedup import near_duplicate_clusters

        for cluster in near_duplicate_clusters(texts, threshold=near_threshold):
            for i in cluster[1:]:
                union(i, cluster[0])
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(len(prompts)):
        groups[find(i)].append(i)
    return sorted(groups.values())


def split_indices(
    groups: list[list[int]], val_fraction: float, seed: int, strata: list[str] | None = None
) -> tuple[list[int], list[int]]:
    """Pick whole groups for validation until ``val_fraction`` of the records (per stratum) is reached."""
    n = sum(len(g) for g in groups)
    if val_fraction <= 0 or n < 2:
        return sorted(i for g in groups for i in g), []
    by_stratum: dict[str, list[list[int]]] = defaultdict(list)
    for g in groups:
        by_stratum[strata[g[0]] if strata else ""].append(g)
    rng = random.Random(seed)
    val: set[int] = set()
    for key in sorted(by_stratum):
        pool = by_stratum[key]
        rng.shuffle(pool)
        target = max(1, round(sum(len(g) for g in pool) * val_fraction))
        taken = 0
        for g in pool:
            if taken >= target:
                break
            if taken and taken + len(g) > target * 1.5:
                continue  # a big group would overshoot; keep it in training
            val.update(g)
            taken += len(g)
    train = [i for i in range(n) if i not in val]
    if not train:
        raise ValueError("validation split would leave no training records; lower the validation fraction")
    return train, sorted(val)


def split_records(
    convs: list[Conversation], val_fraction: float, seed: int, near_threshold: float | None = 0.8
) -> tuple[list[Conversation], list[Conversation]]:
    """Split conversations into (train, validation) without prompt or near-duplicate leakage."""
    prompts = ["\x1f".join(m["content"] for m in c if m["role"] == "user") for c in convs]
    texts = [p + "\n" + c[-1]["content"] for p, c in zip(prompts, convs, strict=True)]
    train, val = split_indices(leak_groups(prompts, texts, near_threshold), val_fraction, seed)
    return [convs[i] for i in train], [convs[i] for i in val]


def _split_keys(row) -> tuple[str, str]:  # noqa: ANN001
    """Prompt and full text of a record, for grouping; classification rows use their text field."""
    if row.error is None:
        return row.prompt, f"{row.prompt}\n{row.answer}"
    import json

    rec = row.raw
    text = rec.get("text") if isinstance(rec, dict) and isinstance(rec.get("text"), str) else None
    text = text if text is not None else json.dumps(rec, ensure_ascii=False, sort_keys=True)
    return text, text


def split_file(
    path: str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.2,
    seed: int = 42,
    stratify: str | None = None,
    near_threshold: float | None = 0.8,
) -> dict[str, Any]:
    """Split a data file into ``out_dir/train.EXT`` and ``out_dir/val.EXT`` without leakage.

    Records with the same prompt or near-duplicate text stay together; with ``stratify`` each
    value of that field is split in the same proportion.
    """
    from ..errors import DatasetError
    from ..files import atomic_write_json, ensure_dir, refuse_input_as_output
    from .convert import write_raw
    from .formats import read_raw
    from .inspect import to_rows

    path, out_dir = Path(path), Path(out_dir)
    if not 0 < val_fraction < 1:
        raise DatasetError(f"validation fraction must be between 0 and 1, got {val_fraction}", str(path))
    ext = path.suffix.lower()
    outputs = [out_dir / f"train{ext}", out_dir / f"val{ext}", out_dir / "split_report.json"]
    refuse_input_as_output(path, outputs)
    raw = read_raw(path)
    rows = to_rows(raw)
    strata = None
    if stratify:
        missing = [r.index for r in rows if not isinstance(r.raw, dict) or stratify not in r.raw]
        if missing:
            raise DatasetError(f"stratify field {stratify!r} is missing", str(path), missing[0])
        strata = [str(r.raw[stratify]) for r in rows]
    prompts, texts = zip(*(_split_keys(r) for r in rows), strict=True) if rows else ((), ())
    groups = leak_groups(list(prompts), list(texts), near_threshold)
    train, val = split_indices(groups, val_fraction, seed, strata)
    ensure_dir(out_dir)
    write_raw([raw[i][1] for i in train], out_dir / f"train{ext}")
    write_raw([raw[i][1] for i in val], out_dir / f"val{ext}")
    report = {
        "input": str(path),
        "records": len(rows),
        "train": len(train),
        "val": len(val),
        "groups": len(groups),
        "grouped_records": sum(len(g) for g in groups if len(g) > 1),
        "seed": seed,
        "val_fraction": val_fraction,
        "stratify": stratify,
        "strata": (
            {
                k: {"train": sum(strata[i] == k for i in train), "val": sum(strata[i] == k for i in val)}
                for k in sorted(set(strata))
            }
            if strata
            else None
        ),
    }
    atomic_write_json(out_dir / "split_report.json", report)
    return report
