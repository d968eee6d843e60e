"""Read raw records from local JSONL / JSON / parquet files, imagefolder directories or `datasets` specs.

Each record comes with a location (`file.jsonl:12` — line 12) used in every error about it, and the directory its
relative image paths resolve against.

>>> import json, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "d.jsonl"
>>> _ = path.write_text(json.dumps({"prompt": "hi", "answer": "1"}) + "\\n")
>>> [r.location for r in read_records(str(path))]
['d.jsonl:1']
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrl.errors import DataError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
METADATA_FILES = ("metadata.jsonl", "metadata.json")
BOM = b"\xef\xbb\xbf"


@dataclass
class RawRecord:
    record: dict[str, Any]
    location: str  # "<file name>:<line>" for JSONL, "<file name>[<index or key>]" otherwise
    key: str  # stable per-dataset key used for default ids: line number, list index or dict key
    base_dir: Path | None  # relative image paths resolve against this


def _not_utf8(path: Path, lineno: int, byte: int, column: int) -> DataError:
    return DataError(f"{path}:{lineno}: not UTF-8 text (byte 0x{byte:02x} at column {column}); re-save the file as "
                     "UTF-8")


def _read_jsonl(path: Path) -> Iterator[RawRecord]:
    # Bytes in, so a non-UTF-8 line is reported with its number instead of a traceback from the text decoder.
    with path.open("rb") as handle:
        for lineno, raw_line in enumerate(handle, start=1):
            if lineno == 1 and raw_line.startswith(BOM):
                raw_line = raw_line[len(BOM):]  # editors on Windows write one; it is not part of the record
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, lineno, err.object[err.start], err.start + 1) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: malformed JSON ({err.msg}, column {err.colno}); fix or remove "
                                "this line") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(record).__name__}")
            yield RawRecord(record, f"{path.name}:{lineno}", str(lineno), path.parent)


def _read_json(path: Path) -> Iterator[RawRecord]:
    data_bytes = path.read_bytes()
    if data_bytes.startswith(BOM):
        data_bytes = data_bytes[len(BOM):]
    try:
        text = data_bytes.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = data_bytes.count(b"\n", 0, err.start) + 1
        column = err.start - (data_bytes.rfind(b"\n", 0, err.start) + 1)
        raise _not_utf8(path, lineno, data_bytes[err.start], column + 1) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg}, column {err.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]  # {"data": [...]} wrapper (some peer exports)
    if isinstance(data, list):
        items = [(str(i), r) for i, r in enumerate(data)]
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        items = [(str(k), r) for k, r in data.items()]  # keyed records (MathVista testmini.json)
    else:
        raise DataError(f"{path}: expected a list of records or a dict of records (id -> record)")
    for key, record in items:
        if not isinstance(record, dict):
            raise DataError(f"{path}[{key}]: expected a JSON object, got {type(record).__name__}")
        yield RawRecord(record, f"{path.name}[{key}]", key, path.parent)


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: cannot read parquet ({err})") from None
    for index, record in enumerate(table.to_pylist()):
        yield RawRecord(record, f"{path.name}[{index}]", str(index), path.parent)


def _read_imagefolder(directory: Path, split: str | None) -> Iterator[RawRecord]:
    """HF `imagefolder` layout: images plus `metadata.jsonl` whose `file_name` column names each row's image."""
    candidates = [directory / split] if split else []
    candidates += [directory, directory / "train"]
    for folder in candidates:
        for name in METADATA_FILES:
            meta = folder / name
            if meta.is_file():
                reader = _read_jsonl if name.endswith(".jsonl") else _read_json
                for raw in reader(meta):
                    record = dict(raw.record)
                    names = [k for k in record if k == "file_name" or k.endswith("_file_name")]
                    if not names:
                        raise DataError(f"{raw.location}: imagefolder metadata rows need a 'file_name' column")
                    record["images"] = [record.pop(k) for k in names]
                    yield RawRecord(record, f"{folder.name}/{raw.location}", raw.key, folder)
                return
    raise DataError(f"{directory}: a dataset directory needs a metadata.jsonl (imagefolder layout) or point "
                    "data.train at a .jsonl/.json/.parquet file")


def _read_hf(spec: str, split: str | None) -> Iterator[RawRecord]:
    """Any `datasets.load_dataset` spec; `name@split` is accepted (EasyR1 style)."""
    name = spec
    if "@" in spec and split is None:
        name, split = spec.rsplit("@", 1)
    try:
        import datasets

        dataset = datasets.load_dataset(name, split=split or "train")
    except Exception as err:  # the hub, the network or the builder can each fail in its own way
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"dataset '{spec}': not a local file and datasets.load_dataset failed ({first_line})") from None
    stem = name.rstrip("/").split("/")[-1]
    for index, record in enumerate(dataset):
        yield RawRecord(dict(record), f"{stem}[{index}]", str(index), None)


def dataset_stem(path: str) -> str:
    """Short dataset name used in default ids: the file stem, or the last part of a hub id."""
    local = Path(path)
    if local.suffix in LOCAL_SUFFIXES:
        return local.stem
    return path.split("@")[0].rstrip("/").split("/")[-1] or "data"


def read_records(path: str, split: str | None = None) -> Iterator[RawRecord]:
    """Records of a dataset in file order; see the module docstring."""
    local = Path(path[len("file://"):] if path.startswith("file://") else path).expanduser()
    if local.is_dir():
        yield from _read_imagefolder(local, split)
        return
    if local.is_file():
        readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet}
        reader = readers.get(local.suffix.lower())
        if reader is None:
            raise DataError(f"{local}: unsupported file type '{local.suffix}'; use .jsonl, .json, .parquet or an "
                            "imagefolder directory")
        if local.stat().st_size == 0:
            raise DataError(f"{local}: empty dataset file (0 bytes)")
        yield from reader(local)
        return
    if local.suffix.lower() in LOCAL_SUFFIXES or path.startswith((".", "/", "~")) or local.parent.is_dir() and \
            local.parent != Path("."):
        raise DataError(f"{path}: dataset file not found; check data.train / data.eval (build synthetic data with "
                        "`mmrl build-data synthetic --out DIR`)")
    yield from _read_hf(path, split)
