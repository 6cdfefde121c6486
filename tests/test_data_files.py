"""Bad input files: each gets a DatasetError that names the file and says how to fix it."""

import json
import os
import time

import pytest

from conftest import write_json
from tunesmith.data import formats
from tunesmith.data.convert import write_records
from tunesmith.data.formats import load_records, read_raw
from tunesmith.errors import DatasetError

RECORDS = [
    {"instruction": "你是谁？", "input": "", "output": "嫔妾甄嬛，大理寺少卿甄远道之女。"},
    {
        "instruction": "皇上今天来了吗？",
        "input": "",
        "output": "回娘娘的话，皇上今日在养心殿批阅奏折，怕是不会来了。",
    },
    {"instruction": "翻译成英文", "input": "今天天气很好", "output": "The weather is nice today."},
]


def test_gbk_file_names_encoding_and_iconv_command(tmp_path):
    p = tmp_path / "huanhuan.json"
    p.write_bytes(json.dumps(RECORDS, ensure_ascii=False, indent=2).encode("gbk"))
    with pytest.raises(DatasetError) as e:
        load_records(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: file is not UTF-8") and "line 3" in msg
    assert "looks like GB18030/GBK" in msg
    assert f"iconv -f GB18030 -t UTF-8 {p} > {tmp_path / 'huanhuan.utf8.json'}" in msg


def test_utf16_file_is_recognised(tmp_path):
    p = tmp_path / "w.jsonl"
    p.write_bytes("\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS).encode("utf-16"))
    with pytest.raises(DatasetError, match=r"not UTF-8 .*looks like UTF-16.*iconv -f UTF-16 -t UTF-8"):
        load_records(p)


def test_utf8_bom_is_accepted(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(RECORDS, ensure_ascii=False).encode())
    assert len(load_records(p)) == 3


@pytest.mark.parametrize("name", ["e.json", "e.jsonl", "e.csv"])
@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
def test_empty_file(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(DatasetError, match=r"e\.\w+: file is empty$"):
        load_records(p)


def test_unsupported_extension_lists_supported(tmp_path):
    p = write_json(tmp_path / "data.txt", RECORDS)
    with pytest.raises(
        DatasetError, match=r"unsupported file type '\.txt'; supported: \.json, \.jsonl, \.csv"
    ):
        load_records(p)


def test_directory_instead_of_file(tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(DatasetError, match="cannot read the file"):
        read_raw(tmp_path / "d.json")


def test_malformed_json_gives_line_and_column(tmp_path):
    p = tmp_path / "m.json"
    p.write_text('[\n  {"instruction": "q",\n   "output": }\n]', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"m\.json: invalid JSON at line 3 column 14: Expecting value"):
        load_records(p)
    p.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1]) + "\n", encoding="utf-8")
    with pytest.raises(
        DatasetError, match=r"line 2 column 1: Extra data; one JSON object per line .*\.jsonl"
    ):
        load_records(p)
    q = tmp_path / "m.jsonl"
    q.write_text(
        '{"instruction": "q", "output": "a"}\n{"instruction": "q" "output": "a"}\n', encoding="utf-8"
    )
    with pytest.raises(DatasetError, match=r"m\.jsonl: line 2: invalid JSON at column 21 \(Expecting ','"):
        load_records(q)


def test_deeply_nested_json_is_an_error_not_a_crash(tmp_path):
    p = tmp_path / "deep.json"
    p.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(DatasetError, match="nested too deeply"):
        load_records(p)


def test_non_object_record_is_named(tmp_path):
    p = write_json(tmp_path / "n.json", [RECORDS[0], ["not", "an", "object"]])
    assert read_raw(p)[1] == (None, ["not", "an", "object"])  # read as is, for tools that report
    with pytest.raises(DatasetError, match=r"n\.json, record 1: record must be an object, got list"):
        load_records(p)


# --- CSV --------------------------------------------------------------------------------------


def test_csv_alpaca_and_synonym_columns(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text(
        '\ufeffInstruction,input,output,system\n你是谁？,,"嫔妾甄嬛，\n大理寺少卿甄远道之女。",扮演甄嬛\n\n翻译,hi,你好,\n',
        encoding="utf-8",
    )
    assert read_raw(p)[1][0] == 5  # line numbers count the lines of quoted multi-line fields
    convs = load_records(p)
    assert convs[0] == [
        {"role": "system", "content": "扮演甄嬛"},
        {"role": "user", "content": "你是谁？"},
        {"role": "assistant", "content": "嫔妾甄嬛，\n大理寺少卿甄远道之女。"},
    ]
    assert convs[1] == [{"role": "user", "content": "翻译\nhi"}, {"role": "assistant", "content": "你好"}]
    for header in ("prompt,response", "question,answer", "Question,output"):
        q = tmp_path / "s.csv"
        q.write_text(f"{header}\n你是谁？,嫔妾甄嬛\n", encoding="utf-8")
        assert load_records(q) == [
            [{"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "嫔妾甄嬛"}]
        ]


def test_csv_missing_columns_names_found_and_expected(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("text,label\nhello,greeting\n", encoding="utf-8")
    with pytest.raises(DatasetError) as e:
        load_records(p)
    msg = str(e.value)
    assert "CSV columns found: text, label" in msg
    assert "instruction and output" in msg and "prompt and response" in msg and "question and answer" in msg


def test_csv_without_header(tmp_path):
    p = tmp_path / "h.csv"
    p.write_text("你是谁？,嫔妾甄嬛\n皇上呢？,在养心殿\n", encoding="utf-8")
    with pytest.raises(
        DatasetError, match=r"CSV columns found: 你是谁？, 嫔妾甄嬛;.*first row must be a header"
    ):
        load_records(p)
    p.write_text("你是谁？,嫔妾甄嬛\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"no data rows below the header \(你是谁？, 嫔妾甄嬛\)"):
        load_records(p)


def test_csv_row_errors_give_line(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("instruction,output\nq,a\nq2,a2,oops\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"r\.csv, record 1: line 3: 3 fields but the header has 2"):
        load_records(p)
    p.write_text("instruction,output\nq,a\n\nq2,\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"record 1: field 'output' is empty \(line 4\)"):
        load_records(p)
    p.write_text("instruction,output,\nq,a,\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad header row: column\(s\) \[3\] have no name"):
        load_records(p)


def test_csv_only_holds_alpaca(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("instruction,output\nq,a\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="a CSV file holds alpaca records; format 'sharegpt'"):
        load_records(p, fmt="sharegpt")


# --- huge records -----------------------------------------------------------------------------


def test_huge_field_is_named_with_its_length(tmp_path):
    big = "长" * 2_000_000  # 2M characters, 6 MB of UTF-8, over the default 1M-character limit
    p = write_json(tmp_path / "big.json", [RECORDS[0], {"instruction": "q", "output": big}])
    with pytest.raises(DatasetError) as e:
        load_records(p)
    msg = str(e.value)
    assert (
        "big.json, record 1: field 'output' is 2,000,000 characters long, over the limit of 1,000,000" in msg
    )
    assert "split this record" in msg and "长长" not in msg


def test_huge_nested_field_in_jsonl_and_csv(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "MAX_FIELD_CHARS", 100)
    p = tmp_path / "m.jsonl"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x" * 101}]
    p.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps({"messages": msgs}) + "\n", encoding="utf-8")
    with pytest.raises(
        DatasetError, match=r"record 1: field 'messages\[1\]\.content' is 101 characters.*\(line 2\)"
    ):
        load_records(p)
    q = tmp_path / "m.csv"
    q.write_text("instruction,output\nq," + "y" * 150 + "\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"record 0: field 'output' is 150 characters"):
        load_records(q)
    monkeypatch.setattr(formats, "MAX_FIELD_CHARS", 1_000_000)
    q.write_text("instruction,output\nq," + "y" * 500_000 + "\n", encoding="utf-8")  # > csv's 128 KiB default
    assert len(load_records(q)[0][1]["content"]) == 500_000


def test_50mb_record_is_read_quickly(tmp_path):
    p = tmp_path / "huge.json"
    p.write_text(json.dumps([{"instruction": "q", "output": "a" * 50_000_000}]), encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="50,000,000 characters long"):
        load_records(p)
    assert time.perf_counter() - start < 10  # about 0.2 s here; the bound only catches pathologies


# --- atomic writes ----------------------------------------------------------------------------


def test_failed_write_leaves_existing_file_intact(tmp_path, monkeypatch):
    out = write_json(tmp_path / "out.json", RECORDS)
    before = out.read_bytes()
    bad = [RECORDS[0], {"instruction": "q", "output": "a", "meta": object()}]
    with pytest.raises(DatasetError, match=r"out\.json, record 1: cannot write the record as JSON"):
        write_records(bad, out, "alpaca")
    assert out.read_bytes() == before

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # fails after the temp file has been written
    with pytest.raises(OSError, match="(?i)no space left on device"):
        write_records(RECORDS[:1], out, "alpaca")
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left behind
