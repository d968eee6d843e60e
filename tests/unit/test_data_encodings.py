"""Dataset files in the wrong encoding are one line naming file and line (exit 2); a UTF-8 BOM is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrl.cli import main
from mmrl.data.dataset import load_samples
from mmrl.data.readers import read_records
from mmrl.errors import DataError

BOM = b"\xef\xbb\xbf"
ROWS = [{"id": "a", "prompt": "Quelle couleur ?", "answer": "rouge"},
        {"id": "b", "prompt": "Combien d'élèves ?", "answer": "3"},
        {"id": "c", "prompt": "Größe?", "answer": "4"}]


def _jsonl_bytes(rows, encoding="utf-8") -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(encoding)


def test_bom_jsonl_and_json_are_read(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(BOM + _jsonl_bytes(ROWS))
    (tmp_path / "d.json").write_bytes(BOM + json.dumps(ROWS, ensure_ascii=False, indent=1).encode())
    for name in ("d.jsonl", "d.json"):
        samples = load_samples(str(tmp_path / name))
        assert [(s.id, s.answer) for s in samples] == [("a", "rouge"), ("b", "3"), ("c", "4")]
        assert samples[1].prompt == "Combien d'élèves ?"


def test_latin1_line_in_jsonl_names_the_line(tmp_path):
    # Lines 1-2 are UTF-8, line 3 was appended by a tool writing Latin-1: a mixed file.
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(_jsonl_bytes(ROWS[:2]) + _jsonl_bytes(ROWS[2:], "latin-1"))
    with pytest.raises(DataError, match=r"mixed\.jsonl:3: not UTF-8 text \(byte 0xf6 at column \d+\); re-save"):
        list(read_records(str(path)))


def test_non_utf8_json_names_the_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(json.dumps(ROWS, ensure_ascii=False, indent=1).encode("cp1252"))
    text = json.dumps(ROWS, ensure_ascii=False, indent=1)
    line = text[: text.index("é")].count("\n") + 1
    with pytest.raises(DataError, match=rf"d\.json:{line}: not UTF-8 text \(byte 0xe9"):
        load_samples(str(path))


def test_utf16_file_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_bytes(_jsonl_bytes(ROWS, "utf-16"))
    assert main(["data", "show", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "d.jsonl:1: not UTF-8 text (byte 0xff" in err and "Traceback" not in err
    assert main(["data", "check", str(path)]) == 2


def test_imagefolder_metadata_in_latin1(tmp_path):
    (tmp_path / "metadata.jsonl").write_bytes(
        _jsonl_bytes([{"file_name": "x.png", "question": "Größe?", "answer": "4"}], "latin-1"))
    with pytest.raises(DataError, match=r"metadata\.jsonl:1: not UTF-8"):
        load_samples(str(tmp_path))


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="dataset file not found"):
        load_samples(str(tmp_path / "nope.jsonl"))
    (tmp_path / "empty.jsonl").write_bytes(BOM + b"\n\n")
    with pytest.raises(DataError, match="empty dataset"):
        load_samples(str(tmp_path / "empty.jsonl"))


def test_huge_line_is_read(tmp_path):
    prompt = "é" * 3_000_000
    path = Path(tmp_path / "big.jsonl")
    path.write_bytes(BOM + _jsonl_bytes([{"id": "big", "prompt": prompt, "answer": "1"}, *ROWS]))
    samples = load_samples(str(path))
    assert len(samples) == 4 and samples[0].prompt == prompt
