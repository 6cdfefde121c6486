"""Readers that turn alpaca / sharegpt / OpenAI-messages records into one canonical form.

Files may be JSON, JSON Lines or CSV (alpaca columns only).

The canonical form of a record is a list of messages ``{"role": ..., "content": ...}`` with an
optional leading system message, then user/assistant turns alternating and ending with the
assistant. Every record is validated; a bad one raises ``DatasetError`` naming file and record.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..registry import Registry
from .textcheck import lone_surrogates

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


class BadRecord(Exception):
    """Raised inside readers; turned into DatasetError with file and record by the loader."""


def _text(rec: dict[str, Any], key: str, required: bool = True) -> str:
    if key not in rec or rec[key] is None:
        if required and key in rec:
            raise BadRecord(f"field {key!r} is null; it must hold text")
        if required:
            raise BadRecord(f"missing field {key!r} (found fields: {', '.join(map(str, rec)) or 'none'})")
        return ""
    value = rec[key]
    if not isinstance(value, str):
        raise BadRecord(f"field {key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise BadRecord(f"field {key!r} is empty")
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
        raise BadRecord("field 'history' must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise BadRecord(f"history[{i}] must be a [question, answer] pair of strings")
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    user = f"{instruction}\n{extra}" if extra.strip() else instruction
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return msgs


def _messages(items: Any, field: str, role_key: str, content_key: str) -> Conversation:
    if not isinstance(items, list) or not items:
        raise BadRecord(f"field {field!r} must be a non-empty list of messages")
    msgs = []
    for i, m in enumerate(items):
        if not isinstance(m, dict):
            raise BadRecord(f"{field}[{i}] must be an object, got {type(m).__name__}")
        rk = role_key if role_key in m else "role"
        ck = content_key if content_key in m else "content"
        role = m.get(rk)
        if role not in SHAREGPT_ROLES:
            raise BadRecord(f"{field}[{i}].{rk} is {role!r}; expected one of {sorted(SHAREGPT_ROLES)}")
        content = m.get(ck)
        if not isinstance(content, str):
            raise BadRecord(f"{field}[{i}].{ck} must be a string, got {type(content).__name__}")
        msgs.append({"role": SHAREGPT_ROLES[role], "content": content})
    return msgs


@FORMATS.register("sharegpt")
def read_sharegpt(rec: dict[str, Any]) -> Conversation:
    """{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}], "system"?: ...}"""
    if "conversations" not in rec:
        raise BadRecord(f"missing field 'conversations' (found fields: {', '.join(map(str, rec))})")
    msgs = _messages(rec["conversations"], "conversations", "from", "value")
    system = _text(rec, "system", required=False)
    if system.strip() and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


@FORMATS.register("messages")
def read_messages(rec: dict[str, Any]) -> Conversation:
    """OpenAI chat format: {"messages": [{"role": ..., "content": ...}]}"""
    if "messages" not in rec:
        raise BadRecord(f"missing field 'messages' (found fields: {', '.join(map(str, rec))})")
    return _messages(rec["messages"], "messages", "role", "content")


def detect_format(rec: dict[str, Any]) -> str:
    if "messages" in rec:
        return "messages"
    if "conversations" in rec:
        return "sharegpt"
    if "instruction" in rec or "output" in rec:
        return "alpaca"
    raise BadRecord(
        "cannot tell the format: expected 'instruction'/'output' (alpaca), 'conversations' "
        f"(sharegpt) or 'messages' (OpenAI); found fields: {', '.join(map(str, rec)) or 'none'}"
    )


def validate_conversation(msgs: Conversation) -> None:
    """Roles in order: [system], user, assistant, user, assistant, ... ending with assistant."""
    body = msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs
    if not body:
        raise BadRecord("conversation has no user/assistant turns")
    for i, m in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise BadRecord(f"turn {i} has role {m['role']!r}, expected {expected!r} (roles must alternate)")
        if not m["content"].strip():
            raise BadRecord(f"turn {i} ({m['role']}) has empty content")
    if body[-1]["role"] != "assistant":
        raise BadRecord("conversation must end with an assistant turn")


# ---------------------------------------------------------------------------------------------
# Reading files: .json / .jsonl / .csv, with clear errors for the usual ways a file goes wrong.

SUPPORTED_EXTENSIONS = (".json", ".jsonl", ".csv")
MAX_FIELD_CHARS = 1_000_000
"""Longest string (in characters, about 1 MB of text) a record may hold in any field."""

_DETECT_BYTES = 256 * 1024  # enough text for charset_normalizer; the whole file can take seconds
_CSV_FIELD_LIMIT = 2**31 - 1  # the csv module's own 128 KiB default would reject long answers
_CSV_SYNONYMS = {"prompt": "instruction", "question": "instruction", "response": "output", "answer": "output"}
_CHINESE_CODECS = {"gb18030", "gbk", "gb2312"}
_EAST_ASIAN_CODECS = {"cp949", "euc_kr", "johab", "big5", "big5hkscs", "cp950", "cp932", "shift_jis"}
_EAST_ASIAN_CODECS |= {"shift_jis_2004", "euc_jp", "euc_jis_2004", "hz", "iso2022_kr", "iso2022_jp"}
_THIN_EVIDENCE_BYTES = 2048  # below this, an East Asian guess is weak

RawRecord = tuple[int | None, Any]  # (line number or None, parsed record)


def _iconv_name(codec: str) -> str:
    if codec in _CHINESE_CODECS:
        return "GB18030"  # a superset of GBK and GB2312, so it decodes all three
    return {"latin_1": "ISO-8859-1"}.get(
        codec, codec.upper().replace("_", "-").replace("ISO8859", "ISO-8859")
    )


def _guess_encoding(raw: bytes, bad_byte: int) -> str | None:
    """Best guess of a non-UTF-8 file's encoding, from a sample around the first bad byte."""
    from charset_normalizer import from_bytes

    # Start at a line boundary so multi-byte characters are not cut; near the start of the
    # file start at 0 so a UTF-16 file stays aligned on its code units.
    lo = 0 if bad_byte < 65536 else raw.rfind(b"\n", 0, bad_byte) + 1
    sample = raw[lo : lo + _DETECT_BYTES]
    for cut in range(4):  # the sample may end inside a multi-byte character
        best = from_bytes(sample[: len(sample) - cut] if cut else sample).best()
        if best is not None:
            if best.encoding in ("ascii", "utf_8"):
                return None
            return _prefer_gb18030(raw, best.encoding)
        if len(sample) < _DETECT_BYTES:
            break
    return None


def _prefer_gb18030(raw: bytes, codec: str) -> str:
    """GB18030 over another East Asian guess when a short file decodes as GB18030.

    A few dozen bytes of GBK text fit CP949 or Big5 as well, and charset_normalizer may pick one
    of those; converting with it gives garbage. Chinese files are the likelier case here, and
    GB18030 decodes every GBK and GB2312 file, so on thin evidence it is the better advice.
    """
    if codec in _CHINESE_CODECS or codec not in _EAST_ASIAN_CODECS or len(raw) > _THIN_EVIDENCE_BYTES:
        return codec
    try:
        raw.decode("gb18030")
    except UnicodeDecodeError:
        return codec
    return "gb18030"


def _not_utf8_message(path: Path, raw: bytes, err: UnicodeDecodeError) -> str:
    line = raw.count(b"\n", 0, err.start) + 1
    if err.reason == "unexpected end of data" and err.end == len(raw):
        return (
            f"file ends in the middle of a character (line {line}, byte offset {err.start} of "
            f"{len(raw)}): it looks cut off while being written or copied; restore the whole file"
        )
    where = f"invalid byte 0x{raw[err.start]:02x} at line {line}, byte offset {err.start}"
    codec = _guess_encoding(raw, err.start)
    if codec is None:
        return f"file is not UTF-8 ({where}) and its encoding could not be detected; save it as UTF-8"
    label = "GB18030/GBK" if codec in _CHINESE_CODECS else _iconv_name(codec)
    out = path.with_name(f"{path.stem}.utf8{path.suffix}")
    return (
        f"file is not UTF-8 ({where}; looks like {label}); convert it with: "
        f"iconv -f {_iconv_name(codec)} -t UTF-8 {shlex.quote(str(path))} > {shlex.quote(str(out))}"
    )


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError("file not found", str(path)) from None
    except OSError as e:
        raise DatasetError(f"cannot read the file ({e.strerror or e})", str(path)) from None
    try:
        return raw.decode("utf-8-sig")  # a BOM (Windows Notepad, Excel) is not part of the data
    except UnicodeDecodeError as e:
        raise DatasetError(_not_utf8_message(path, raw, e), str(path)) from None


def _huge_number(text: str, err: ValueError) -> str:
    """The message for a number too long for Python's int(): where it is and what to do."""
    m = re.search(rf"\d{{{sys.get_int_max_str_digits() + 1},}}", text)
    if m is None:
        return f"cannot read a value: {str(err)[:200]}"
    line = text.count("\n", 0, m.start()) + 1
    return (
        f"a number with {len(m.group()):,} digits at line {line} (more than Python reads, "
        f"{sys.get_int_max_str_digits():,}); write it as a string if it is data"
    )


def _parse_json(text: str, path: Path) -> list[tuple[int | None, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = "; one JSON object per line belongs in a .jsonl file" if e.msg == "Extra data" else ""
        raise DatasetError(
            f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}{hint}", str(path)
        ) from None
    except RecursionError:
        raise DatasetError("JSON is nested too deeply to read", str(path)) from None
    except ValueError as e:  # json reads integers through int(), which refuses > 4300 digits
        raise DatasetError(_huge_number(text, e), str(path)) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DatasetError("expected a JSON array of records (or JSON Lines in a .jsonl file)", str(path))
    return [(None, r) for r in data]


def _parse_jsonl(text: str, path: Path) -> list[tuple[int | None, Any]]:
    out: list[tuple[int | None, Any]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((lineno, json.loads(line)))
            except json.JSONDecodeError as e:
                msg = f"line {lineno}: invalid JSON at column {e.colno} ({e.msg})"
                raise DatasetError(msg, str(path)) from None
            except RecursionError:
                raise DatasetError(f"line {lineno}: JSON is nested too deeply", str(path)) from None
            except ValueError as e:
                raise DatasetError(f"line {lineno}: {_huge_number(line, e)}", str(path)) from None
    return out


def _csv_header(row: list[str] | None, path: Path) -> list[str]:
    header = [c.strip() for c in row or []]
    if not any(header):
        raise DatasetError("no header row; the first row must name the columns", str(path))
    blank = [i + 1 for i, c in enumerate(header) if not c]
    dupes = sorted({c for c in header if header.count(c) > 1})
    if blank or dupes:
        problem = f"column(s) {blank} have no name" if blank else f"duplicate column(s) {', '.join(dupes)}"
        raise DatasetError(f"bad header row: {problem} (found: {', '.join(header)})", str(path))
    return header


def _parse_csv(text: str, path: Path) -> list[tuple[int | None, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    # field_size_limit is process-wide; raise it only while reading, lengths are checked per record.
    previous = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        first = next((row for row in reader if any(cell.strip() for cell in row)), None)
        header = _csv_header(first, path)
        out: list[tuple[int | None, Any]] = []
        start = reader.line_num + 1
        for row in reader:
            if any(cell.strip() for cell in row):
                if len(row) != len(header):
                    raise DatasetError(
                        f"line {start}: {len(row)} fields but the header has {len(header)} "
                        f"({', '.join(header)}); check the quoting of that row",
                        str(path),
                        len(out),
                    )
                out.append((start, dict(zip(header, row, strict=True))))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DatasetError(f"line {reader.line_num}: invalid CSV ({e})", str(path)) from None
    finally:
        csv.field_size_limit(previous)
    if not out:
        msg = f"no data rows below the header ({', '.join(header)}); the first row must name the columns"
        raise DatasetError(msg, str(path))
    return out


_PARSERS: dict[str, Callable[[str, Path], list[tuple[int | None, Any]]]] = {
    ".json": _parse_json,
    ".jsonl": _parse_jsonl,
    ".csv": _parse_csv,
}


def walk_strings(rec: Any) -> Iterator[tuple[str, str]]:
    """Every string anywhere in ``rec``, in order, as (field path such as ``messages[1].content``, text).

    Iterative: a record nested a thousand levels deep must not hit the recursion limit.
    """
    stack: list[tuple[str, Any]] = [("", rec)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            yield where, value
        elif isinstance(value, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))


def map_strings(obj: Any, fn: Callable[[str], str]) -> Any:
    """A copy of ``obj`` with ``fn`` applied to every string at any depth (iterative, as above)."""
    stack: list[tuple[Any, Any]] = []

    def convert(value: Any) -> Any:
        if isinstance(value, str):
            return fn(value)
        if isinstance(value, dict | list):
            new: Any = {} if isinstance(value, dict) else []
            stack.append((value, new))
            return new
        return value

    top = convert(obj)
    while stack:
        src, dst = stack.pop()
        if isinstance(src, dict):
            for k, v in src.items():
                dst[k] = convert(v)
        else:
            dst.extend(convert(v) for v in src)
    return top


def _oversized_field(rec: Any) -> tuple[str, int] | None:
    """The first string anywhere in ``rec`` longer than MAX_FIELD_CHARS, as (field path, length)."""
    return next(((where, len(s)) for where, s in walk_strings(rec) if len(s) > MAX_FIELD_CHARS), None)


def surrogate_field(rec: Any) -> str | None:
    """The first field of ``rec`` holding a lone UTF-16 surrogate, or None."""
    return next((where for where, s in walk_strings(rec) if lone_surrogates(s)), None)


def check_raw_record(rec: Any, path: str | Path, index: int, lineno: int | None = None) -> dict[str, Any]:
    """Return ``rec`` if it is an object whose strings all fit in ``MAX_FIELD_CHARS``.

    Raises:
        DatasetError: naming the file, record index (and line), and the field that is too long.
    """
    where = f" (line {lineno})" if lineno else ""
    if not isinstance(rec, dict):
        raise DatasetError(f"record must be an object, got {type(rec).__name__}{where}", str(path), index)
    big = _oversized_field(rec)
    if big:
        raise DatasetError(
            f"field {big[0]!r} is {big[1]:,} characters long, over the limit of {MAX_FIELD_CHARS:,}{where}; "
            "split this record into smaller ones or drop it",
            str(path),
            index,
        )
    broken = surrogate_field(rec)
    if broken:
        raise DatasetError(
            f"field {broken!r} holds a lone UTF-16 surrogate (half of an emoji cut off by some tool)"
            f"{where}; `tunesmith data clean` (or data.clean: default) replaces it with U+FFFD",
            str(path),
            index,
        )
    return rec


def read_raw(path: str | Path) -> list[RawRecord]:
    """Read the records of a .json, .jsonl or .csv file without interpreting or checking them.

    JSON: an array of objects (or an object whose ``data`` key holds the array). JSON Lines: one
    object per line, blank lines ignored. CSV: a header row, then one record per row as a dict of
    column -> string. All must be UTF-8 (a leading BOM is allowed). Records are returned as
    parsed, so a caller that reports bad records can see them; ``check_raw_record`` checks one
    (an object, no string over ``MAX_FIELD_CHARS``), as ``load_records`` does for every record.

    Args:
        path: the data file.

    Returns:
        (line number, record) pairs; the line number is None for JSON arrays.

    Raises:
        DatasetError: the file is missing, empty, not UTF-8 (with the likely encoding and an
            ``iconv`` command), malformed (with line and column), or has an unsupported
            extension; a CSV file without a usable header or with a row of the wrong width.
    """
    path = Path(path)
    parse = _PARSERS.get(path.suffix.lower())
    if parse is None:
        raise DatasetError(
            f"unsupported file type {path.suffix or '(no extension)'!r}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}",
            str(path),
        )
    text = _read_text(path)
    if not text.strip():
        raise DatasetError("file is empty", str(path))
    return parse(text, path)


_raw_records = read_raw  # the old private name


def alpaca_from_csv(records: list[RawRecord], path: str | Path) -> list[RawRecord]:
    """Rename the columns of CSV rows (from ``read_raw``) to alpaca fields.

    Column names match in any case; prompt or question stands for instruction, and response or
    answer for output, where the alpaca column itself is absent. Other columns are kept.

    Raises:
        DatasetError: instruction and output cannot both be found; names the columns found.
    """
    columns = list(records[0][1]) if records else []
    names = {c: c.strip().lower() for c in columns}
    for c, low in names.items():
        if low in _CSV_SYNONYMS and _CSV_SYNONYMS[low] not in names.values():
            names[c] = _CSV_SYNONYMS[low]
    if records and not {"instruction", "output"} <= set(names.values()):
        raise DatasetError(
            f"CSV columns found: {', '.join(columns)}; expected a header with instruction and output "
            "(optional: input, system), or prompt and response, or question and answer; "
            "the first row must be a header naming the columns",
            str(path),
        )
    return [(lineno, {names[k]: v for k, v in rec.items()}) for lineno, rec in records]


def load_records(
    path: str | Path,
    fmt: str = "auto",
    system_prompt: str | None = None,
    prepare: Callable[[list[RawRecord]], list[RawRecord]] | None = None,
) -> list[Conversation]:
    """Load and validate every record of a .json, .jsonl or .csv file.

    A CSV file holds alpaca-style records: columns instruction and output (optional input,
    system), or prompt and response, or question and answer (column names in any case).

    Args:
        path: the data file.
        fmt: "auto" or a registered format name (see ``FORMATS``); a CSV file is always alpaca.
        system_prompt: added as the system message to records that have none.
        prepare: applied to the raw records before they are validated (e.g. cleaning).

    Raises:
        DatasetError: naming the file, the record index (and line for JSONL/CSV) and the field.
    """
    path = Path(path)
    if fmt != "auto":
        FORMATS.get(fmt)  # unknown names fail early with the list of choices
    records = read_raw(path)
    if path.suffix.lower() == ".csv":
        if fmt not in ("auto", "alpaca"):
            raise DatasetError(
                f"a CSV file holds alpaca records; format {fmt!r} needs .json or .jsonl", str(path)
            )
        records, fmt = alpaca_from_csv(records, path), "alpaca"
    if prepare is not None:
        records = prepare(records)
    convs = []
    for index, (lineno, rec) in enumerate(records):
        check_raw_record(rec, path, index, lineno)
        try:
            msgs = FORMATS.get(detect_format(rec) if fmt == "auto" else fmt)(rec)
            validate_conversation(msgs)
        except BadRecord as e:
            where = f" (line {lineno})" if lineno else ""
            raise DatasetError(f"{e}{where}", str(path), index) from None
        if system_prompt and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": system_prompt})
        convs.append(msgs)
    if not convs:
        raise DatasetError("no records found", str(path))
    return convs
