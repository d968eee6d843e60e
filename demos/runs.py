"""Run viewer (`mmrl demo runs RUN_DIR`): the metric curves of a run per stage (reward components, accuracy,
completion length, KL, entropy, clip fractions, loss) from `metrics.jsonl`, and the saved samples
(`samples/step-N.jsonl`) browsable by step with their rewards and images. Another run's `metrics.jsonl` can be
uploaded to compare: its curves are drawn dashed over this run's. Reads the run directory only; writes nothing into it.
"""

from __future__ import annotations

import html
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from demos._common import MAX_UPLOAD_MB, DemoInputError, shown_errors
from mmrl.errors import DataError, UserError
from mmrl.eval.plots import PLOTS, PlotSpec, _draw, _present, _series, read_metrics, stage_changes

PANELS: tuple[PlotSpec, ...] = (
    *PLOTS,
    PlotSpec("entropy", "Entropy of the policy", "nats / token", _present("entropy")),
    PlotSpec("clip", "Clip fractions", "fraction of tokens",
             _present("loss/clip_frac_low", "loss/clip_frac_high", "loss/dual_clip_frac", "completion_length/clipped_ratio")),
)
ALL_STAGES = "all stages"
MAX_COMPLETION_CHARS = 400  # per table cell; the full text is shown for the picked sample


@dataclass
class Run:
    path: Path
    rows: list[dict[str, Any]]
    sample_steps: list[int]


def load_run(run_dir: str | Path) -> Run:
    """The run's metrics rows and the steps that have saved samples (`UserError` when it is not a run)."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise UserError(f"run directory {path} does not exist; pass the directory of a run (e.g. runs/quickstart)")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        # A pipeline's output (runs/quickstart) holds one run per step: name them rather than only saying "no".
        inner = sorted(str(m.parent) for m in path.glob("*/metrics.jsonl"))
        hint = f"; the runs inside it: {', '.join(inner[:6])}" if inner else " (it has metrics.jsonl and samples/)"
        raise UserError(f"{metrics} not found; `mmrl demo runs` needs a run directory written by `mmrl train` or "
                        f"`mmrl sft`{hint}")
    try:
        rows = read_metrics(metrics)
    except UnicodeDecodeError:
        raise UserError(f"{metrics}: not UTF-8 text; is this a metrics.jsonl written by mmrl?") from None
    if not rows:
        raise UserError(f"{metrics}: no steps logged yet; start the viewer once the run has logged its first step")
    return Run(path=path, rows=rows, sample_steps=sample_steps(path))


def sample_steps(run_dir: Path) -> list[int]:
    """Steps with a `samples/step-N.jsonl`, ascending."""
    found = []
    for file in (run_dir / "samples").glob("step-*.jsonl"):
        match = re.fullmatch(r"step-(\d+)\.jsonl", file.name)
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def stage_names(rows: list[dict[str, Any]]) -> list[str]:
    return [label for _, label in stage_changes(rows)]


def _rows_of_stage(rows: list[dict[str, Any]], stage: str) -> list[dict[str, Any]]:
    if stage in ("", None, ALL_STAGES):
        return rows
    return [r for r in rows if str(r.get("stage_name") or f"stage {r.get('stage')}") == stage]


def curves(rows: list[dict[str, Any]], stage: str = ALL_STAGES,
           other: tuple[str, list[dict[str, Any]]] | None = None) -> tuple[list[tuple[Image.Image, str]], list[str]]:
    """One figure per panel that has data, as (image, caption), for the rows of `stage`; and notes on the rest.

    `other` = (name, rows) of another run: drawn dashed on the same axes as this run's curves (a panel that only one
    of them logged still shows that one), so a comparison is read against the run, not beside it."""
    chosen = _rows_of_stage(rows, stage)
    if not chosen:
        raise DemoInputError(f"no metrics rows for {stage!r}")
    theirs = other[1] if other is not None else []
    keys = sorted({k for row in [*chosen, *theirs] for k in row})
    changes = stage_changes(chosen)
    figures, notes = [], []
    with tempfile.TemporaryDirectory(prefix="mmrl-demo-runs-") as tmp:
        for spec in PANELS:
            selected = [k for k in spec.select(keys) if _series(chosen, k)[0] or _series(theirs, k)[0]]
            if not selected:
                notes.append(f"{spec.title}: not logged")
                continue
            png = _draw(spec, chosen, selected, changes, Path(tmp), other)
            caption = spec.title if other is None else f"{spec.title}: this run (solid) vs {other[0]} (dashed)"
            with Image.open(png) as figure:
                figures.append((figure.convert("RGB"), caption))
    return figures, notes


def read_samples(run: Run, step: int) -> list[dict[str, Any]]:
    """The saved samples of one step (a line that is not JSON is reported, not skipped silently)."""
    file = run.path / "samples" / f"step-{int(step)}.jsonl"
    if not file.is_file():
        raise DemoInputError(f"no samples saved at step {step}; steps with samples: {run.sample_steps or 'none'}")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DemoInputError(f"samples/step-{step}.jsonl: not UTF-8 text") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DemoInputError(f"samples/step-{step}.jsonl:{number}: not a JSON line") from None
            if not isinstance(row, dict):
                raise DemoInputError(f"samples/step-{step}.jsonl:{number}: not a JSON object (one sample per line)")
            out.append(row)
    return out


def samples_table(samples: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows): index, id, answer, reward, each reward component, advantage, the completion (cut)."""
    components = sorted({k for s in samples for k in s if k.startswith("reward/")})
    headers = ["#", "id", "answer", "reward", *components, "advantage", "completion"]
    rows = []
    for i, s in enumerate(samples):
        text = str(s.get("completion", ""))
        cut = text if len(text) <= MAX_COMPLETION_CHARS else text[:MAX_COMPLETION_CHARS] + "…"
        rows.append([i, str(s.get("id", "")), json.dumps(s.get("answer"), ensure_ascii=False)[:80], s.get("reward"),
                     *[s.get(c) for c in components], s.get("advantage"), cut])  # fmt: skip
    return headers, rows


def sample_images(run: Run, sample: dict[str, Any], problems: list[str] | None = None) -> list[Image.Image]:
    """The images a sample row names (`images`: paths, absolute or relative to the run directory). One that cannot
    be shown (moved, deleted, corrupt) is left out, and why goes into `problems` for the page to say."""
    from mmrl.data.vision import load_image

    out = []
    refs = sample.get("images") or []
    for ref in [refs] if isinstance(refs, str) else refs:
        path = Path(str(ref))
        path = path if path.is_absolute() else run.path / path
        try:
            out.append(load_image(path))
        except DataError as err:
            if problems is not None:  # the text still shows; the page says which image is missing
                problems.append(f"image {ref} not shown: {str(err).split(': ', 1)[-1]}")
    return out


def uploaded_metrics(path: str | None) -> list[dict[str, Any]]:
    """Rows of an uploaded metrics.jsonl, or `DemoInputError` saying why it cannot be read."""
    if not path:
        raise DemoInputError("upload a metrics.jsonl first")
    file = Path(path)
    if file.stat().st_size > MAX_UPLOAD_MB * 2**20:
        raise DemoInputError(f"{file.name}: above the {MAX_UPLOAD_MB} MB upload limit")
    try:
        rows = read_metrics(file)
    except UserError as err:
        raise DemoInputError(str(err).replace(str(file.parent) + "/", "")) from None
    except UnicodeDecodeError:
        raise DemoInputError(f"{file.name}: not UTF-8 text; upload a metrics.jsonl written by mmrl") from None
    if not rows:
        raise DemoInputError(f"{file.name}: no rows")
    return rows


def build_app(run_dir: str | Path) -> Any:
    import gradio as gr

    run = load_run(run_dir)
    stages = [ALL_STAGES, *stage_names(run.rows)]
    first_figures, first_notes = curves(run.rows)
    with gr.Blocks(title=f"mmrl · run {run.path.name}") as app:
        gr.Markdown(f"## Run `{run.path.name}`\n{len(run.rows)} logged steps · "
                    f"{len(run.sample_steps)} steps with saved samples · stages: {', '.join(stages[1:]) or 'one'}")
        status = gr.Markdown(elem_id="runs-status")
        with gr.Tab("curves"):
            stage = gr.Dropdown(stages, value=ALL_STAGES, label="stage", elem_id="runs-stage")
            gallery = gr.Gallery(value=first_figures, label="curves", columns=2, height="auto", object_fit="contain",
                                 elem_id="runs-curves")  # contain: a cropped plot loses its axes
            notes = gr.Markdown("; ".join(first_notes), elem_id="runs-notes")
        with gr.Tab("samples"):
            steps = [str(s) for s in run.sample_steps]
            step = gr.Dropdown(steps, value=steps[-1] if steps else None, label="step", elem_id="runs-step")
            table = gr.Dataframe(label="samples", interactive=False, wrap=True, elem_id="runs-samples")
            with gr.Row():
                index = gr.Number(value=0, precision=0, label="sample #", elem_id="runs-index")
                open_button = gr.Button("open sample", elem_id="runs-open")
            full = gr.Textbox(label="completion", lines=6, interactive=False, elem_id="runs-completion")
            images = gr.Gallery(label="images", columns=4, height="auto", elem_id="runs-images")
        with gr.Tab("compare"):
            upload = gr.File(label="another run's metrics.jsonl", file_types=[".jsonl", ".json"], type="filepath",
                             elem_id="runs-upload")  # fmt: skip
            other = gr.Gallery(label="this run's curves with the uploaded run's overlaid (dashed)", columns=2,
                               height="auto", object_fit="contain",
                               elem_id="runs-other")

        @shown_errors(3, 0)
        def on_stage(stage_name):
            figures, skipped = curves(run.rows, stage_name)
            return "", figures, "; ".join(skipped)

        @shown_errors(3, 0)
        def on_step(step_value):
            if not step_value:
                raise DemoInputError("this run has no saved samples (samples/step-N.jsonl)")
            headers, rows = samples_table(read_samples(run, int(step_value)))
            return "", gr.update(value=rows, headers=headers), 0

        @shown_errors(3, 0)
        def on_index(step_value, i):
            samples = read_samples(run, int(step_value)) if step_value else []
            if not samples or i is None or not 0 <= int(i) < len(samples):
                raise DemoInputError(f"pick a sample between 0 and {max(0, len(samples) - 1)}")
            sample = samples[int(i)]
            problems: list[str] = []
            images = sample_images(run, sample, problems)
            return html.escape("; ".join(f"⚠️ {p}" for p in problems)), str(sample.get("completion", "")), images

        @shown_errors(2, 0)
        def on_upload(path):
            figures, _ = curves(run.rows, ALL_STAGES, (f"uploaded {Path(path or '').name}", uploaded_metrics(path)))
            return "", figures

        stage.change(on_stage, stage, [status, gallery, notes])
        step.change(on_step, step, [status, table, index])
        open_button.click(on_index, [step, index], [status, full, images])
        index.submit(on_index, [step, index], [status, full, images])
        upload.upload(on_upload, upload, [status, other])
        if steps:
            app.load(on_step, step, [status, table, index])
    return app


__all__ = ["build_app", "curves", "load_run", "read_samples", "sample_images", "samples_table", "uploaded_metrics"]
