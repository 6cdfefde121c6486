"""Readers that turn alpaca / sharegpt / OpenAI-messages records into one canonical form.

The canonical form of a record is a list of messages ``{"role": ..., "content": ...}`` with an
optional leading system message, then user/assistant turns alternating and ending with the
assistant. Every record is validated; a bad one raises ``DatasetError`` naming file and record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..registry import Registry

Message = dict[str, str]
Conversation = list[Message]
Reader = Callable[[dict[str, Any]], Conversation]

FORMATS: Registry[Reader] = Registry("data format")

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}


class _Bad(Exception):
    """Raised inside readers; turned into DatasetError with file and record by the loader."""


def _text(rec: dict[str, Any], key: str, required: bool = True) -> str:
    if key not in rec or rec[key] is None:
        if required:
            raise _Bad(f"missing field {key!r} (found fields: {', '.join(map(str, rec)) or 'none'})")
        return ""
    value = rec[key]
    if not isinstance(value, str):
        raise _Bad(f"field {key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _Bad(f"field {key!r} is empty")
    return value


@FORMATS.register("alpaca")
def read_alpaca(rec: dict[str, Any]) -> Conversation:
    """instruction / input / output, with optional system and history [[q, a], ...]."""
    instruction = _text(rec, "instruction")
    extra = _text(rec, "input", required=False)
    output = _text(rec, "output")
    msgs: Conversation = []
    system = _text(rec, "system", required=False)
    if system.strip():
        msgs.append({"role": "system", "content": system})
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise _Bad("field 'history' must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise _Bad(f"history[{i}] must be a [question, answer] pair of strings")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction}\n{extra}" if extra.strip() else instruction
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return msgs


def _messages(items: Any, field: str, role_key: str, content_key: str) -> Conversation:
    if not isinstance(items, list) or not items:
        raise _Bad(f"field {field!r} must be a non-empty list of messages")
    msgs = []
    for i, m in enumerate(items):
        if not isinstance(m, dict):
            raise _Bad(f"{field}[{i}] must be an object, got {type(m).__name__}")
        rk = role_key if role_key in m else "role"
        ck = content_key if content_key in m else "content"
        role = m.get(rk)
        if role not in SHAREGPT_ROLES:
            raise _Bad(f"{field}[{i}].{rk} is {role!r}; expected one of {sorted(SHAREGPT_ROLES)}")
        content = m.get(ck)
        if not isinstance(content, str):
            raise _Bad(f"{field}[{i}].{ck} must be a string, got {type(content).__name__}")
        msgs.append({"role": SHAREGPT_ROLES[role], "content": content})
    return msgs


@FORMATS.register("sharegpt")
def read_sharegpt(rec: dict[str, Any]) -> Conversation:
    """{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}], "system"?: ...}"""
    if "conversations" not in rec:
        raise _Bad(f"missing field 'conversations' (found fields: {', '.join(map(str, rec))})")
    msgs = _messages(rec["conversations"], "conversations", "from", "value")
    system = _text(rec, "system", required=False)
    if system.strip() and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


@FORMATS.register("messages")
def read_messages(rec: dict[str, Any]) -> Conversation:
    """OpenAI chat format: {"messages": [{"role": ..., "content": ...}]}"""
    if "messages" not in rec:
        raise _Bad(f"missing field 'messages' (found fields: {', '.join(map(str, rec))})")
    return _messages(rec["messages"], "messages", "role", "content")


def detect_format(rec: dict[str, Any]) -> str:
    if "messages" in rec:
        return "messages"
    if "conversations" in rec:
        return "sharegpt"
    if "instruction" in rec or "output" in rec:
        return "alpaca"
    raise _Bad(
        "cannot tell the format: expected 'instruction'/'output' (alpaca), 'conversations' "
        f"(sharegpt) or 'messages' (OpenAI); found fields: {', '.join(map(str, rec)) or 'none'}"
    )


def validate_conversation(msgs: Conversation) -> None:
    """Roles in order: [system], user, assistant, user, assistant, ... ending with assistant."""
    body = msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs
    if not body:
        raise _Bad("conversation has no user/assistant turns")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise _Bad(f"turn {i} has role {m['role']!r}, expected {expected!r} (roles must alternate)")
        if not m["content"].strip():
            raise _Bad(f"turn {i} ({m['role']}) has empty content")
    if body[-1]["role"] != "assistant":
        raise _Bad("conversation must end with an assistant turn")


def _raw_records(path: Path) -> list[tuple[int | None, Any]]:
    """Return (line number or None, object) pairs from a .json or .jsonl file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError("file not found", str(path)) from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"not UTF-8 text ({e.reason} at byte {e.start})", str(path)) from None
    if path.suffix.lower() == ".jsonl":
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"line {lineno}: invalid JSON ({e.msg})", str(path)) from None
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", str(path)) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DatasetError("expected a JSON array of records (or JSON Lines in a .jsonl file)", str(path))
    return [(None, r) for r in data]


def load_records(path: str | Path, fmt: str = "auto", system_prompt: str | None = None) -> list[Conversation]:
    """Load and validate every record of a .json / .jsonl file.

    Args:
        path: the data file.
        fmt: "auto" or a registered format name (see ``FORMATS``).
        system_prompt: added as the system message to records that have none.

    Raises:
        DatasetError: naming the file, the record index (and line for JSONL) and the field.
    """
    path = Path(path)
    if fmt != "auto":
        FORMATS.get(fmt)  # unknown names fail early with the list of choices
    convs = []
    for index, (lineno, rec) in enumerate(_raw_records(path)):
        where = f" (line {lineno})" if lineno else ""
        try:
            if not isinstance(rec, dict):
                raise _Bad(f"record must be an object, got {type(rec).__name__}")
            msgs = FORMATS.get(detect_format(rec) if fmt == "auto" else fmt)(rec)
            validate_conversation(msgs)
        except _Bad as e:
            raise DatasetError(f"{e}{where}", str(path), index) from None
        if system_prompt and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": system_prompt})
        convs.append(msgs)
    if not convs:
        raise DatasetError("no records found", str(path))
    return convs
