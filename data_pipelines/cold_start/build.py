"""Modality bridging (Vision-R1): VLM pseudo-CoT -> VLM description -> text-only reasoner -> verified SFT data.

`build_cold_start(cfg)` runs the three generation stages for every sample not yet in the cache (resumable), then
writes `train.jsonl` (native records: images referenced by path, the reasoner's `<think>`+`<answer>` as `response`),
`report.json` (kept + rejected per reason + failed per reason == input; tokens spent per stage; the models, URLs
redacted) and `lengths.png` (a histogram of the kept targets' lengths) from the cache, in input order, so a resumed
build writes exactly what an uninterrupted one does.

A *rejection* (a malformed, wrong or low-quality reply) is cached and final under the same config; a *failure* (the
endpoint gave no answer: timeout, dropped connection, 5xx/429 after retries, a refused key) is only reported and the
next run retries it. When every item a run attempted failed, the build ends with `EndpointFailed` (exit code 1).
Cache lines carry a fingerprint of the stage's model, sampling and exact prompt, so a changed config regenerates.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from data_pipelines.cold_start.cache import StageCache
from data_pipelines.cold_start.config import STAGES, ColdStartConfig, StageConfig
from data_pipelines.cold_start.filters import jaccard, judge, malformed, shingles
from data_pipelines.cold_start.interrupt import InFlight, Interrupts, run_items
from data_pipelines.cold_start.remote import (
    ENDPOINT_ONLY,
    check_reached,
    classify,
    describe_model,
    fingerprint,
    open_backend,
    prompt_view,
    redact_url,
    warn_endpoint_only,
)
from data_pipelines.inputs import check_image_files
from mmrl.data.dataset import load_samples
from mmrl.data.sample import Sample
from mmrl.data.templates import IMAGE_PLACEHOLDER
from mmrl.generation import GenerationBackend, Prompt, SamplingParams
from mmrl.generation.load import is_server_url
from mmrl.models.interface import interface_of_backend


def question_text(sample: Sample) -> str:
    """The sample's question as text, without its `<image>` slot markers: the stage's prompt carries the images as
    image parts already, and a marker left in the text reached the model as text (SmolVLM's processor reads
    `<image>` as its image token: one image and two image tokens, every item failed).

    >>> question_text(Sample(id="a", prompt="<image>\\nWhat is it?", answer="x", images=["a.png"]))
    'What is it?'
    """
    if isinstance(sample.prompt, str):
        text = sample.prompt
    else:
        text = "\n".join(part.get("text", "") for m in sample.prompt
                         for part in (m["content"] if isinstance(m.get("content"), list)
                                      else [{"text": m.get("content")}])
                         if part.get("text"))
    text = re.sub(re.escape(IMAGE_PLACEHOLDER) + r"\n?", "", text)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def fill(template: str, **values: str) -> str:
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


class StageRunner:
    """One stage's model, prompt and limits: the prompt and cache fingerprint of a sample, and `run` (once a
    backend is attached) returning the cache entry, or a failure (`failed: True`) that is never cached."""

    def __init__(self, name: str, cfg: StageConfig, prompt: str) -> None:
        self.name, self.cfg, self.prompt_template = name, cfg, prompt
        self.backend: GenerationBackend | None = None
        self.opened = ""  # the part of the turn the model's chat template opens (`<think>`), set with the backend
        self.stopping = threading.Event()  # set by the first Ctrl-C / SIGTERM: no new request (interrupt.py)
        self.in_flight = InFlight()
        # The in-process backend is not thread-safe: one call at a time; an endpoint takes `concurrency`.
        self.slots = threading.Semaphore(cfg.concurrency if is_server_url(cfg.model) else 1)
        # What determines this stage's reply besides the prompt (not the key, retries or timeouts: they decide
        # only whether an answer comes, and a request that got none is never cached).
        self.identity = {"stage": name, "model": describe_model(cfg.model), "served_model": cfg.served_model,
                         "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "seed": cfg.seed,
                         "attempts": cfg.attempts}

    def prompt(self, sample: Sample, values: dict[str, str]) -> Prompt:
        text = fill(self.prompt_template, question=question_text(sample), **values)
        # The reasoner is text-only: it sees the description, never the image.
        return Prompt.from_question(text, images=[] if self.name == "reason" else sample.images)

    def fingerprint(self, prompt: Prompt) -> str:
        return fingerprint(**self.identity, prompt=prompt_view(prompt.messages))

    def run(self, prompt: Prompt) -> dict[str, Any]:
        assert self.backend is not None
        spent, reason, failed = 0, "empty", False
        for attempt in range(self.cfg.attempts):
            seed = None if self.cfg.seed is None else self.cfg.seed + attempt
            params = SamplingParams(temperature=self.cfg.temperature, max_new_tokens=self.cfg.max_new_tokens,
                                    seed=seed)
            try:
                with self.slots:
                    if self.stopping.is_set():  # interrupted: start nothing new (a failure: the next run retries)
                        return {"ok": False, "reason": f"{self.name}:interrupted", "tokens": spent, "failed": True}
                    self.in_flight.add(self.name, 1)
                    try:
                        completion = self.backend.generate([prompt], params)[0][0]
                    finally:
                        self.in_flight.add(self.name, -1)
            except Exception as err:  # noqa: BLE001 - classified; a local backend's own errors re-raised
                kind = classify(err, is_server_url(self.cfg.model))
                if kind is None:
                    raise
                reason, failed = kind
                continue
            failed = False
            tokens = completion.n_tokens or completion.extra.get("completion_tokens") or len(completion.text.split())
            spent += tokens
            # The model's whole turn: a thinking template's opened <think> belongs to the reasoning it wrote.
            text = self.opened + completion.text
            bad = malformed(text, completion.finish_reason, need_tags=self.name == "reason")
            if bad is None:
                return {"ok": True, "text": text.strip(), "tokens": spent, "target_tokens": tokens}
            reason = bad
        # The last attempt decides: no answer at all is a failure (retried by the next run), a bad one a rejection.
        return {"ok": False, "reason": f"{self.name}:{reason}", "tokens": spent, **({"failed": True} if failed else {})}


def make_runners(cfg: ColdStartConfig) -> dict[str, StageRunner]:
    warn_local_endpoint_settings(cfg)
    return {stage: StageRunner(stage, getattr(cfg.stages, stage), cfg.prompt_text(stage)) for stage in STAGES}


def warn_local_endpoint_settings(cfg: ColdStartConfig) -> None:
    """One warning naming the endpoint-only settings given to local-model stages (they run in-process: one call at a
    time, no key, no served name). A defaulted `pseudo_cot` (a copy of `describe`) is not named twice."""
    pseudo = cfg.stages.pseudo_cot
    defaulted = pseudo is not None and pseudo.model_dump() == {**cfg.stages.describe.model_dump(), "prompt": None}
    stages = [s for s in STAGES if s != "pseudo_cot" or not defaulted]
    local = [s for s in stages if not is_server_url(getattr(cfg.stages, s).model)]
    given = [(s, key) for s in local for key in ENDPOINT_ONLY if key in getattr(cfg.stages, s).model_fields_set]
    warn_endpoint_only("build-data cold-start", [f"stages.{s}.{key}" for s, key in given],
                       [getattr(cfg.stages, s).model for s, _ in given])


def attach_backends(runners: dict[str, StageRunner]) -> None:
    loaded: dict[tuple, GenerationBackend] = {}
    for stage, runner in runners.items():
        scfg = runner.cfg
        if is_server_url(scfg.model):
            key: tuple = (scfg.model, scfg.served_model, scfg.api_key_env, scfg.concurrency, scfg.max_retries,
                          scfg.timeout)
            kw = {"served_model": scfg.served_model, "api_key_env": scfg.api_key_env,
                  "concurrency": scfg.concurrency, "max_retries": scfg.max_retries, "timeout": scfg.timeout}
        else:
            key, kw = (scfg.model,), {}
        if key not in loaded:  # the same VLM for stages 1 and 2 loads once
            # pseudo_cot defaults to describe's model: an error names every stage that uses it
            field = " / ".join(f"stages.{s}.model" for s, r in runners.items() if r.cfg.model == scfg.model)
            loaded[key] = open_backend(scfg.model, f"stages.{stage}.api_key_env", field=field, **kw)
        runner.backend = loaded[key]
        runner.opened = interface_of_backend(runner.backend).turn_prefix  # "" for an endpoint (whole turns)


def walk(sample: Sample, runners: dict[str, StageRunner], cache: StageCache,
         run: bool = False) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """The sample's stage entries under the current config, up to its first rejection. Without `run`, a stage not
    in the cache stops the walk with `{"missing": stage}`; with `run` it is generated (and cached), and a failed
    request stops the walk with the failure."""
    values: dict[str, str] = {}
    entries: dict[str, dict[str, Any]] = {}
    for stage, key in zip(STAGES, ("pseudo_cot", "description", None)):
        runner = runners[stage]
        prompt = runner.prompt(sample, values)
        fp = runner.fingerprint(prompt)
        entry = cache.get(sample.id, stage, fp)
        if entry is None:
            if not run:
                return entries, {"missing": stage}
            result = runner.run(prompt)
            if result.get("failed"):
                return entries, result
            entry = cache.put(sample.id, stage, fp, **result)
        entries[stage] = entry
        if not entry["ok"]:
            break
        if key:
            values[key] = entry["text"]
    return entries, None


def generate_all(samples: list[Sample], cache: StageCache, runners: dict[str, StageRunner],
                 workers: int) -> tuple[int, dict[str, str]]:
    """Run the stages of every unfinished sample; returns (how many were run, {sample id: failure reason})."""
    todo = [s for s in samples if walk(s, runners, cache)[1] is not None]
    if not todo:
        return 0, {}
    from mmrl.runs.logger import item_progress

    attach_backends(runners)
    failures: dict[str, str] = {}
    bar = item_progress(len(todo), "cold-start")
    in_flight = InFlight()
    with Interrupts("mmrl build-data cold-start", in_flight) as interrupts:
        for runner in runners.values():
            runner.stopping, runner.in_flight = interrupts.stopping, in_flight

        def done(index: int, result: tuple) -> None:
            if result[1] is not None:
                failures[todo[index].id] = result[1]["reason"]
            bar.update(1)
            bar.set_postfix(failed=len(failures), refresh=False)

        try:
            # Ctrl-C / SIGTERM: the first starts nothing new and waits for the requests in flight (their replies
            # are cached), the second ends the wait at once (interrupt.py)
            run_items(todo, lambda s: walk(s, runners, cache, True), workers, interrupts.stopping, done)
        finally:
            bar.close()
        if interrupts.stopping.is_set():
            interrupts.interrupt()
    return len(todo), failures


def native_record(sample: Sample, response: str, stages: dict[str, str]) -> dict[str, Any]:
    record = sample.to_json()
    keep = ("id", "images", "prompt", "answer", "task", "choices", "image_size", "box_frame", "box_format")
    out = {k: record[k] for k in keep if record.get(k) is not None}
    out["images"] = [str(Path(p).resolve()) if isinstance(p, str) else p for p in out.get("images", [])]
    out["response"] = response
    out["meta"] = {**{k: v for k, v in sample.meta.items() if isinstance(v, (str, int, float, bool))},
                   "cold_start": stages}
    return out


def write_outputs(samples: list[Sample], cache: StageCache, cfg: ColdStartConfig, runners: dict[str, StageRunner],
                  failures: dict[str, str], out: Path) -> dict[str, Any]:
    """train.jsonl, report.json and lengths.png from the cache, in input order (near-duplicates: later ones go).
    `failures`: the items whose request failed in this run (not cached: in the report's `failed`, not `rejected`)."""
    reasons: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    kept: list[dict[str, Any]] = []
    kept_shingles: list[set] = []
    lengths: list[int] = []
    for sample in samples:
        entries, missing = walk(sample, runners, cache)
        for stage, entry in entries.items():
            tokens[stage] += entry["tokens"]
        if missing is not None:
            failed[failures.get(sample.id, f"{missing['missing']}:not_run")] += 1
            continue
        rejected = next((e for e in entries.values() if not e["ok"]), None)
        if rejected is not None:
            reasons[rejected["reason"]] += 1
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
    assert len(kept) + sum(reasons.values()) + sum(failed.values()) == len(samples)
    _atomic_write(out / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    report = {"input": len(samples), "kept": len(kept), "rejected": dict(sorted(reasons.items())),
              "failed": dict(sorted(failed.items())), "tokens_per_stage": dict(tokens),
              "models": {stage: redact_url(r.cfg.model) for stage, r in runners.items()},
              "train": str(out / "train.jsonl"), "lengths_png": "lengths.png"}
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
    from mmrl.runs.directory import RunDirLock

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_samples(cfg.data)
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    check_image_files(samples)
    lock = RunDirLock(out)
    lock.acquire()  # two builds appending one cache would duplicate work
    cache = StageCache(out / "cache.jsonl")
    try:
        runners = make_runners(cfg)
        workers = max(getattr(cfg.stages, s).concurrency for s in STAGES)
        ran, failures = generate_all(samples, cache, runners, workers)
        report = write_outputs(samples, cache, cfg, runners, failures, out)
    finally:
        cache.close()
        lock.release()
    report["generated_now"] = ran
    check_reached(Counter(failures.values()), ran,
                  {stage: (r.cfg.model, f"stages.{stage}.model") for stage, r in runners.items()})
    return report
