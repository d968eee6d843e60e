"""Modality bridging (Vision-R1): VLM pseudo-CoT -> VLM description -> text-only reasoner -> verified SFT data.

`build_cold_start(cfg)` runs the three generation stages for every sample not yet in the cache (resumable), then
writes `train.jsonl` (native records: images referenced by path, the reasoner's `<think>`+`<answer>` as `response`),
`report.json` (kept + rejected per reason == input; tokens spent per stage) and `lengths.png` (a histogram of the kept
targets' lengths) from the cache, in input order, so a resumed build writes exactly what an uninterrupted one does.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from data_pipelines.cold_start.cache import StageCache
from data_pipelines.cold_start.config import STAGES, ColdStartConfig, StageConfig
from data_pipelines.cold_start.filters import jaccard, judge, malformed, shingles
from mmrl.data.dataset import load_samples
from mmrl.data.sample import Sample
from mmrl.generation import GenerationBackend, Prompt, SamplingParams, load_backend
from mmrl.generation.load import is_server_url


# Errors a remote stage may end with after the client's own retries; anything else is a bug and propagates.
def _request_failure(err: Exception) -> str | None:
    import openai

    if isinstance(err, openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection"
    if isinstance(err, openai.APIStatusError):
        return f"http_{err.status_code}"
    if isinstance(err, openai.OpenAIError):
        return "bad_response"
    return None


def question_text(sample: Sample) -> str:
    if isinstance(sample.prompt, str):
        return sample.prompt
    return "\n".join(part.get("text", "") for m in sample.prompt
                     for part in (m["content"] if isinstance(m.get("content"), list) else [{"text": m.get("content")}])
                     if part.get("text"))


def fill(template: str, **values: str) -> str:
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


class StageRunner:
    """One stage's backend, prompt and limits; `run` returns the cache entry of one sample."""

    def __init__(self, name: str, cfg: StageConfig, prompt: str, backend: GenerationBackend) -> None:
        self.name, self.cfg, self.prompt, self.backend = name, cfg, prompt, backend
        # The in-process backend is not thread-safe: one call at a time; an endpoint takes `concurrency`.
        self.slots = threading.Semaphore(cfg.concurrency if is_server_url(cfg.model) else 1)

    def run(self, sample: Sample, values: dict[str, str]) -> dict[str, Any]:
        text = fill(self.prompt, question=question_text(sample), **values)
        # The reasoner is text-only: it sees the description, never the image.
        prompt = Prompt.from_question(text, images=[] if self.name == "reason" else sample.images)
        spent, reason = 0, "empty"
        for attempt in range(self.cfg.attempts):
            seed = None if self.cfg.seed is None else self.cfg.seed + attempt
            params = SamplingParams(temperature=self.cfg.temperature, max_new_tokens=self.cfg.max_new_tokens,
                                    seed=seed)
            try:
                with self.slots:
                    completion = self.backend.generate([prompt], params)[0][0]
            except Exception as err:  # noqa: BLE001 - classified; unknown errors re-raised
                failure = _request_failure(err)
                if failure is None:
                    raise
                reason = failure
                continue
            tokens = completion.n_tokens or completion.extra.get("completion_tokens") or len(completion.text.split())
            spent += tokens
            bad = malformed(completion.text, completion.finish_reason, need_tags=self.name == "reason")
            if bad is None:
                return {"ok": True, "text": completion.text.strip(), "tokens": spent, "target_tokens": tokens}
            reason = bad
        return {"ok": False, "reason": f"{self.name}:{reason}", "tokens": spent}


def _backends(cfg: ColdStartConfig) -> dict[str, StageRunner]:
    loaded: dict[tuple, GenerationBackend] = {}
    runners = {}
    for stage in STAGES:
        scfg: StageConfig = getattr(cfg.stages, stage)
        if is_server_url(scfg.model):
            key: tuple = (scfg.model, scfg.served_model, scfg.api_key_env, scfg.concurrency, scfg.max_retries,
                          scfg.timeout)
            kw = {"served_model": scfg.served_model, "api_key_env": scfg.api_key_env,
                  "concurrency": scfg.concurrency, "max_retries": scfg.max_retries, "timeout": scfg.timeout}
        else:
            key, kw = (scfg.model,), {}
        if key not in loaded:  # the same VLM for stages 1 and 2 loads once
            loaded[key] = load_backend(scfg.model, **kw)
        runners[stage] = StageRunner(stage, scfg, cfg.prompt_text(stage), loaded[key])
    return runners


def _process(sample: Sample, runners: dict[str, StageRunner], cache: StageCache) -> None:
    values: dict[str, str] = {}
    for stage, key in zip(STAGES, ("pseudo_cot", "description", None)):
        entry = cache.get(sample.id, stage)
        if entry is None:
            entry = cache.put(sample.id, stage, **runners[stage].run(sample, values))
        if not entry["ok"]:
            return
        if key:
            values[key] = entry["text"]


def _pending(samples: list[Sample], cache: StageCache) -> list[Sample]:
    def finished(s: Sample) -> bool:
        entries = [cache.get(s.id, stage) for stage in STAGES]
        return any(e is not None and not e["ok"] for e in entries) or entries[-1] is not None

    return [s for s in samples if not finished(s)]


def generate_all(samples: list[Sample], cache: StageCache, make_runners: Callable[[], dict[str, StageRunner]],
                 workers: int) -> int:
    """Run the stages of every unfinished sample; returns how many were run."""
    todo = _pending(samples, cache)
    if not todo:
        return 0
    from tqdm.auto import tqdm

    runners = make_runners()
    bar = tqdm(total=len(todo), desc="cold-start", unit="item", dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(_process, s, runners, cache) for s in todo]
        for future in futures:
            future.result()
            bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: finish what is in flight, start nothing new
        bar.close()
    return len(todo)


def native_record(sample: Sample, response: str, stages: dict[str, str]) -> dict[str, Any]:
    record = sample.to_json()
    keep = ("id", "images", "prompt", "answer", "task", "choices", "image_size", "box_frame", "box_format")
    out = {k: record[k] for k in keep if record.get(k) is not None}
    out["images"] = [str(Path(p).resolve()) if isinstance(p, str) else p for p in out.get("images", [])]
    out["response"] = response
    out["meta"] = {**{k: v for k, v in sample.meta.items() if isinstance(v, (str, int, float, bool))},
                   "cold_start": stages}
    return out


def write_outputs(samples: list[Sample], cache: StageCache, cfg: ColdStartConfig, out: Path) -> dict[str, Any]:
    """train.jsonl, report.json and lengths.png from the cache, in input order (near-duplicates: later ones go)."""
    reasons: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    kept: list[dict[str, Any]] = []
    kept_shingles: list[set] = []
    lengths: list[int] = []
    for sample in samples:
        entries = {stage: cache.get(sample.id, stage) for stage in STAGES}
        for stage, entry in entries.items():
            tokens[stage] += entry["tokens"] if entry else 0
        failed = next((e for e in entries.values() if e is not None and not e["ok"]), None)
        if failed is not None:
            reasons[failed["reason"]] += 1
            continue
        text = entries["reason"]["text"]
        verdict = judge(text, sample, cfg.filter)
        if verdict is None:
            mine = shingles(text)
            if any(jaccard(mine, other) >= cfg.filter.near_duplicate for other in kept_shingles):
                verdict = "near_duplicate"
            else:
                kept_shingles.append(mine)
        if verdict is not None:
            reasons[verdict] += 1
            continue
        kept.append(native_record(sample, text, {"pseudo_cot": entries["pseudo_cot"]["text"],
                                                 "description": entries["describe"]["text"]}))
        lengths.append(entries["reason"]["target_tokens"])
    assert len(kept) + sum(reasons.values()) == len(samples)
    _atomic_write(out / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    report = {"input": len(samples), "kept": len(kept), "rejected": dict(sorted(reasons.items())),
              "tokens_per_stage": dict(tokens), "train": str(out / "train.jsonl"), "lengths_png": "lengths.png"}
    _atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
    _histogram(lengths, out / "lengths.png")
    return report


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _histogram(lengths: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(lengths, bins=min(30, max(1, len(set(lengths)))))
    ax.set_xlabel("target length (tokens; words where the server reports none)")
    ax.set_ylabel("kept samples")
    ax.set_title(f"cold-start targets (n = {len(lengths)})")
    fig.tight_layout()
    fig.savefig(path.with_name(path.name + ".tmp.png"))
    plt.close(fig)
    os.replace(path.with_name(path.name + ".tmp.png"), path)


def build_cold_start(cfg: ColdStartConfig) -> dict[str, Any]:
    from mmrl.engine.run_dir import RunDirLock

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_samples(cfg.data)
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    lock = RunDirLock(out)
    lock.acquire()  # two builds appending one cache would duplicate work
    cache = StageCache(out / "cache.jsonl")
    try:
        workers = max(getattr(cfg.stages, s).concurrency for s in STAGES)
        ran = generate_all(samples, cache, lambda: _backends(cfg), workers)
        report = write_outputs(samples, cache, cfg, out)
    finally:
        cache.close()
        lock.release()
    report["generated_now"] = ran
    return report
