"""Load datasets of any supported format into `Sample`s.

>>> import json, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "train.jsonl"
>>> _ = path.write_text(json.dumps({"image": "a.png", "problem": "How many?", "solution": "<answer> 2 </answer>"}))
>>> [(s.id, s.answer, s.task) for s in load_samples(str(path))]
[('train:1', '2', 'count')]
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from mmrl.config.data import DataConfig, DatasetSpec
from mmrl.data.adapters import ConvertContext, detect_adapter, get_adapter
from mmrl.data.boxes import xywh_to_xyxy
from mmrl.data.readers import dataset_stem, read_records
from mmrl.data.sample import Sample
from mmrl.errors import DataError, UserError


def _as_spec(spec: DatasetSpec | str | dict) -> DatasetSpec:
    if isinstance(spec, DatasetSpec):
        return spec
    if isinstance(spec, str):
        return DatasetSpec(path=spec)
    return DatasetSpec(**spec)


def _normalize_boxes(sample: Sample, spec: DatasetSpec) -> None:
    """Apply the spec's declared frame/format and store every gold box as xyxy (frames stay as declared)."""
    if spec.box_frame:
        sample.box_frame = spec.box_frame
    if spec.box_format:
        sample.box_format = spec.box_format
    if sample.box_format != "xywh":
        return
    answer = sample.answer
    if sample.task == "grounding" and isinstance(answer, list) and len(answer) == 4:
        sample.answer = xywh_to_xyxy(answer)
    elif isinstance(answer, dict) and isinstance(answer.get("bbox"), list) and len(answer["bbox"]) == 4:
        sample.answer = {**answer, "bbox": xywh_to_xyxy(answer["bbox"])}
    sample.box_format = "xyxy"


# Record keys that never reach a reward under their own name: the prompt, the media and the completion (as in TRL,
# which passes every other dataset column to its reward functions), and the Sample's own fields.
_NOT_COLUMNS = frozenset({"prompt", "messages", "conversations", "message", "images", "image", "image_path",
                          "file_name", "video", "videos", "completion"} | {f.name for f in fields(Sample)})


def _keep_columns(sample: Sample, record: dict[str, Any]) -> None:
    """The record's columns reach rewards under their own names: a TRL dataset's `solution` is `solution` for a TRL
    reward `fn(completions, solution, **kw)`, while mmrl reads the gold from it as `answer` too. A column mmrl already
    passes under that name (answer, task, choices, the adapter's meta) keeps mmrl's value."""
    columns = sample.reward_columns()
    for key, value in record.items():
        if key in _NOT_COLUMNS or key in columns or key in REWARD_ARGUMENTS or not _plain(value):
            continue
        sample.meta[key] = value


# The built-in rewards' own arguments (`tags`, `threshold`...): a data column of that name would reach them as an
# argument (a list, one value per item), so such a column keeps to the record. Written out here because the rewards
# stand in a higher room; tests/unit/test_rooms.py holds it equal to what the reward registry reports.
REWARD_ARGUMENTS = frozenset({
    "allow_boxed", "buffer", "click_radius", "dast", "factor", "max_length", "max_penalty", "max_value_correct",
    "max_value_wrong", "min_value_correct", "min_value_wrong", "ngram_size", "pred_frame", "raw", "tags", "threshold",
})


def _plain(value: Any) -> bool:
    """JSON-like data (what a reward can be sent to a worker process with and a samples file can hold)."""
    if isinstance(value, (str, int, float, bool, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def load_samples(spec: DatasetSpec | str, data_cfg: DataConfig | None = None) -> list[Sample]:
    """All samples of one dataset, converted from its (detected or declared) format.

    Ids are the record's own id, else `<file stem>:<line or index>`; a repeated id gets `#<line or index>` appended
    (then `-2`, `-3`, ... while that is taken too) so ids stay unique and stable. Raises `DataError`/`UserError`
    naming the file and line for bad records.
    """
    spec = _as_spec(spec)
    stem = dataset_stem(spec.path)
    adapter = get_adapter(spec.format) if spec.format not in (None, "", "auto") else None
    image_root = Path(spec.image_root).expanduser() if spec.image_root else None
    samples: list[Sample] = []
    keys: list[str] = []  # each sample's line or index, for renaming a repeated id
    for raw in read_records(spec.path, spec.split):
        if spec.limit is not None and len(samples) >= spec.limit:
            break
        if raw.base_dir is not None and Path(spec.path).suffix:
            raw.location = str(raw.base_dir / raw.location)  # full path in messages: "<dir>/train.jsonl:12"
        if adapter is None:
            adapter = detect_adapter(raw.record, raw.location)
        ctx = ConvertContext(dataset=stem, location=raw.location, key=raw.key, base_dir=raw.base_dir,
                             image_root=image_root)
        try:
            sample = adapter.convert(raw.record, ctx)
        except UserError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise DataError(f"{raw.location}: cannot read this record as format '{adapter.name}' "
                            f"({type(err).__name__}: {err}); set `format:` if detection picked the wrong one") from None
        if sample.answer in (None, "", []):
            raise DataError(f"{raw.location}: record has no gold answer")
        if spec.task:
            sample.task = spec.task
        _normalize_boxes(sample, spec)
        sample.meta.setdefault("source", raw.location)
        sample.meta.setdefault("format", adapter.name)
        _keep_columns(sample, raw.record)
        samples.append(sample)
        keys.append(raw.key)
    if not samples:
        raise DataError(f"{spec.path}: empty dataset (no records)")
    _make_ids_unique(samples, [f"{s.id}#{key}" for s, key in zip(samples, keys)])
    return samples


def _make_ids_unique(samples: list[Sample], renames: list[str]) -> None:
    """The first record with an id keeps it; a repeat takes its entry of `renames`, then with `-2`, `-3`, ... appended.

    A new id avoids every id the data gives (later ones too) and every id given before: records `a`, `a`, `a#2` on
    lines 1-3 keep `a` and `a#2`, and line 2 becomes `a#2-2` (an id the data gives is never renamed unless repeated).
    """
    taken = {s.id for s in samples}
    first: set[str] = set()
    for sample, base in zip(samples, renames):
        if sample.id not in first:
            first.add(sample.id)
            continue
        candidate = base
        n = 2
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        sample.id = candidate
        taken.add(candidate)


def load_datasets(specs: list[DatasetSpec | str], data_cfg: DataConfig | None = None) -> list[Sample]:
    """Concatenate several datasets; ids repeated across datasets are prefixed with their dataset name.

    Each sample's `meta["dataset_weight"]` holds its spec's weight for a weighted sampler.
    """
    out: list[Sample] = []
    renames: list[str] = []  # a repeated id is prefixed with its dataset's name
    for raw_spec in specs:
        spec = _as_spec(raw_spec)
        for sample in load_samples(spec, data_cfg):
            sample.meta.setdefault("dataset_weight", spec.weight)
            out.append(sample)
            renames.append(f"{dataset_stem(spec.path)}/{sample.id}")
    _make_ids_unique(out, renames)
    return out


def sample_to_record(sample: Sample) -> dict[str, Any]:
    """A JSON-ready dict of a sample (images as resolved paths)."""
    return sample.to_json()
