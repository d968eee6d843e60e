"""The evaluation harness: generate k answers per item, score them like the rewards do, write the report.

Outputs in `out_dir`: `report.json` (accuracy, pass@k/mean@k when k > 1, unscorable count, per-task and per-category
breakdown), `report.md` (the same as a markdown table) and `generations.jsonl` (prompt, gold, generations, scores).

>>> from mmrl.config import load_config
>>> from mmrl.models.loading import load_policy
>>> cfg = load_config(None, ["eval.max_new_tokens=16"])
>>> loaded = load_policy(cfg.model, for_training=False)  # doctest: +SKIP
>>> report = evaluate(loaded.model, loaded.processor, samples, cfg.eval, cfg.data, "runs/eval")  # doctest: +SKIP
>>> report["accuracy"], report["by_task"]["count"]["n"]  # doctest: +SKIP
(0.25, 4)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmrl.config.workflow import EvalConfig
from mmrl.data.sample import Sample
from mmrl.errors import DataError
from mmrl.eval.generate import generate_completions
from mmrl.eval.report import build_report, report_markdown
from mmrl.eval.scoring import ItemScore, score_generations
from mmrl.generation import Completion
from mmrl.models.interface import ModelInterface, eval_coordinate_tasks, interface_of


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _generation_record(sample: Sample, completions: list[Completion], item: ItemScore,
                       turns: list[str]) -> dict[str, Any]:
    return {
        "id": sample.id,
        "task": sample.task,
        "category": item.category,
        "prompt": sample.prompt,
        "images": [str(getattr(im, "filename", None) or im) for im in sample.images],
        "answer": sample.answer,
        "generations": turns,  # the model's whole turns, as scored
        "predictions": item.predictions,
        "scores": item.scores,
        "n_tokens": [c.n_tokens for c in completions],
        "truncated": [c.truncated for c in completions],
        **({"unscorable": item.reason} if item.unscorable else {}),
    }


def write_outputs(
    out_dir: str | os.PathLike, report: dict[str, Any], records: Sequence[dict[str, Any]] | None
) -> dict[str, Path]:
    """Write report.json, report.md and (when `records` is given) generations.jsonl; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report": out / "report.json", "markdown": out / "report.md"}
    _write_atomic(paths["report"], json.dumps(report, indent=2, default=str) + "\n")
    _write_atomic(paths["markdown"], report_markdown(report))
    if records is not None:
        paths["generations"] = out / "generations.jsonl"
        lines = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)
        _write_atomic(paths["generations"], lines)
    return paths


def evaluate(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    eval_cfg: EvalConfig,
    data_cfg: Any,
    out_dir: str | os.PathLike | None,
    progress: bool = True,
    info: dict[str, Any] | None = None,
    interface: ModelInterface | None = None,
) -> dict[str, Any]:
    """Evaluate `model` on `samples` (at most `eval_cfg.limit`) and return the report (also written to `out_dir`
    unless it is None). Greedy decoding is deterministic; sampling is seeded by `eval_cfg.seed`.

    `interface` (default: the model's own, `mmrl.models.interface`): generations are scored and recorded as the
    model's whole turns (an opened `<think>` first) and boxes/points are read in its frame; a grounding or GUI item
    with a model whose frame is unknown stops the evaluation before anything is generated."""
    items = list(samples)[: eval_cfg.limit] if eval_cfg.limit else list(samples)
    if not items:
        raise DataError("eval: the evaluation dataset is empty; check data.eval (or --data) and --limit")
    if eval_cfg.greedy and eval_cfg.k > 1:
        raise DataError("eval.k > 1 needs sampling: set eval.greedy=false")
    interface = interface or interface_of(model, processor, template_kwargs=getattr(data_cfg, "chat_template_kwargs",
                                                                                   None),
                                          system_prompt=getattr(data_cfg, "system_prompt", None))
    coordinate_tasks = eval_coordinate_tasks({s.task for s in items}, eval_cfg.reward_for_task)
    if coordinate_tasks and interface.pred_frame is None:
        interface.require_frame(f"eval on {'/'.join(coordinate_tasks)} items")
    from mmrl.runs.logger import item_progress

    bar = item_progress(len(items), "eval", enabled=progress)
    start = time.perf_counter()
    try:
        completions = generate_completions(
            model, processor, items, data_cfg,
            max_new_tokens=eval_cfg.max_new_tokens, greedy=eval_cfg.greedy, temperature=eval_cfg.temperature,
            k=eval_cfg.k, seed=eval_cfg.seed, batch_size=eval_cfg.batch_size, on_batch=bar.update,
        )
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    texts = [[interface.whole_turn(c.text) for c in item] for item in completions]
    scores = score_generations(items, texts, eval_cfg.reward_for_task, tuple(eval_cfg.answer_tags),
                               eval_cfg.allow_boxed, eval_cfg.category_keys, model_frame=interface.pred_frame)
    flat = [c for item in completions for c in item]
    details = {
        "greedy": eval_cfg.greedy,
        "temperature": None if eval_cfg.greedy else eval_cfg.temperature,
        "max_new_tokens": eval_cfg.max_new_tokens,
        "completion_length": sum(c.n_tokens for c in flat) / len(flat),
        "truncated_fraction": sum(c.truncated for c in flat) / len(flat),
        "seconds": round(seconds, 3),
        "pred_frame": interface.pred_frame,
        "turn_prefix": interface.turn_prefix,
        **(info or {}),
    }
    report = build_report(scores, eval_cfg.k, eval_cfg.correct_threshold, details)
    if out_dir is not None:
        records = (
            [_generation_record(s, c, it, t) for s, c, it, t in zip(items, completions, scores, texts)]
            if eval_cfg.save_generations
            else None
        )
        write_outputs(out_dir, report, records)
    return report


def evaluate_config(cfg: Any, out_dir: Path, progress: bool = True, info: dict[str, Any] | None = None) -> dict:
    """Evaluate `cfg.model` on `cfg.data.eval` (at most `cfg.eval.limit` items) into `out_dir`; the CLI and the
    pipeline's eval steps both go through here."""
    import torch

    from mmrl.data.dataset import load_datasets
    from mmrl.data.vision import check_images
    from mmrl.models.loading import load_policy
    from mmrl.runs.threads import announce_threads, configure_threads

    samples = load_datasets(cfg.data.eval, cfg.data)
    if cfg.eval.limit:
        samples = samples[: cfg.eval.limit]
    samples = check_images(samples, cfg.data, out_dir)
    device = cfg.trainer.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    configure_threads(cfg.trainer.num_threads)
    loaded = load_policy(cfg.model, device=device, for_training=False)
    announce_threads()  # once the model loaded: a mistyped model name stays a one-line error
    info = {"model": cfg.model.name_or_path, "data": [spec.path for spec in cfg.data.eval], **(info or {})}
    try:
        return evaluate(loaded.model, loaded.processor, samples, cfg.eval, cfg.data, out_dir, progress=progress,
                        info=info, interface=interface_of(loaded.model, loaded.processor, cfg.model.pred_frame,
                                                         cfg.data.chat_template_kwargs, cfg.data.system_prompt))
    finally:
        del loaded
