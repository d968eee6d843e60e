"""Rejection-sampled SFT data: `mmrl build-data rejection --model PATH|URL --data D --k K --out DIR`.

K completions per item from a policy (any generation backend), each verified against the gold with the accuracy
check of the item's task; a selection rule picks the SFT targets:

- `openvlthinker` (OpenVLThinker, Deng et al. 2025): keep the correct ones; exactly one correct: keep it; several:
  sort them by length in words, drop the longest and keep the next longest; none: the item yields nothing.
- `all-correct`: every correct completion becomes a record (ids `<id>#<k>`).

Same per-item cache (`<out>/cache.jsonl`: resumable, a finished build re-run generates nothing) and report
(`report.json`: items kept + rejected per reason == input; tokens spent) as the cold-start builder. `--keep-previous`
(ours): an item the policy never solves keeps the response its input record had, counted as `kept_previous`.

>>> select(["a b c", "a b", "a b c d", "x"], [True, True, True, False], "openvlthinker")
['a b c']
>>> select(["a b", "x"], [True, False], "openvlthinker"), select(["a", "b"], [False, False], "all-correct")
(['a b'], [])
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from data_pipelines.registry import register_builder

RULES = ("openvlthinker", "all-correct")


def select(texts: list[str], correct: list[bool], rule: str) -> list[str]:
    """The SFT targets among `texts` (in sampling order for `all-correct`)."""
    good = [t for t, ok in zip(texts, correct) if ok]
    if rule == "all-correct" or len(good) <= 1:
        return good
    # Stable sort: among equal lengths the earlier sample wins, so the choice is reproducible.
    by_length = sorted(good, key=lambda t: len(t.split()), reverse=True)
    return [by_length[1]]


def _correct(text: str, finish: str, sample: Any) -> bool | None:
    from mmrl.rewards.accuracy import verify_answer
    from mmrl.rewards.extraction import extract_answer

    if finish == "length":
        return False  # a cut-off completion is never a target
    columns = {k: v for k, v in sample.reward_columns().items() if k not in ("answer", "task", "choices")}
    score = verify_answer(extract_answer(text, tags=("<answer>", "</answer>"), allow_boxed=True), sample.answer,
                          sample.task, sample.choices, **columns)
    return None if score is None else score == 1.0


def _prompt(sample: Any, system: str | None, suffix: str | None) -> Any:
    from mmrl.data.templates import build_messages
    from mmrl.generation import Prompt

    images = iter(sample.images)
    messages = build_messages(sample, system, suffix)
    for message in messages:  # fill the image slots in order, as the trainer does
        if isinstance(message["content"], list):
            message["content"] = [{"type": "image", "image": next(images)} if p.get("type") == "image" else p
                                  for p in message["content"]]
    return Prompt(messages)


def _sample_item(backend: Any, sample: Any, args: argparse.Namespace) -> dict[str, Any]:
    from data_pipelines.cold_start.build import _request_failure
    from mmrl.generation import SamplingParams

    params = SamplingParams(n=args.k, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                            seed=args.seed)
    reason = "empty"
    for _ in range(args.attempts):
        try:
            completions = backend.generate([_prompt(sample, args.system_prompt, args.prompt_suffix)], params)[0]
        except Exception as err:  # noqa: BLE001 - classified; unknown errors re-raised
            reason = _request_failure(err)
            if reason is None:
                raise
            continue
        tokens = sum(c.n_tokens or len(c.text.split()) for c in completions)
        return {"ok": True, "texts": [c.text.strip() for c in completions],
                "finish": [c.finish_reason for c in completions], "tokens": tokens}
    return {"ok": False, "reason": reason, "tokens": 0}


def build_rejection(args: argparse.Namespace) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    from data_pipelines.cold_start.build import _atomic_write, _histogram, native_record
    from data_pipelines.cold_start.cache import StageCache
    from mmrl.data.dataset import load_samples
    from mmrl.engine.run_dir import RunDirLock
    from mmrl.generation import load_backend
    from mmrl.generation.load import is_server_url

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_samples(args.data)[: args.limit] if args.limit else load_samples(args.data)
    lock = RunDirLock(out)
    lock.acquire()
    cache = StageCache(out / "cache.jsonl")
    try:
        todo = [s for s in samples if cache.get(s.id, "sample") is None]
        if todo:
            remote = is_server_url(args.model)
            kw = ({"served_model": args.served_model, "api_key_env": args.api_key_env,
                   "concurrency": args.concurrency, "max_retries": args.max_retries, "timeout": args.timeout}
                  if remote else {})
            backend = load_backend(args.model, **kw)
            bar = tqdm(total=len(todo), desc="rejection", unit="item", dynamic_ncols=True)
            with ThreadPoolExecutor(max_workers=args.concurrency if remote else 1) as pool:
                futures = [pool.submit(lambda s: cache.put(s.id, "sample", **_sample_item(backend, s, args)), s)
                           for s in todo]
                try:
                    for future in futures:
                        future.result()
                        bar.update(1)
                finally:
                    for future in futures:
                        future.cancel()
                    bar.close()
        records, reasons, tokens, lengths, previous = [], Counter(), 0, [], 0
        for sample in samples:
            entry = cache.get(sample.id, "sample")
            tokens += entry["tokens"]
            if not entry["ok"]:
                reasons[entry["reason"]] += 1
                continue
            flags = [_correct(t, f, sample) for t, f in zip(entry["texts"], entry["finish"])]
            if any(f is None for f in flags):
                reasons["gold_unusable"] += 1
                continue
            chosen = select(entry["texts"], [bool(f) for f in flags], args.rule)
            if not chosen and args.keep_previous and sample.response:
                chosen, previous = [sample.response], previous + 1
            if not chosen:
                reasons["none_correct"] += 1
                continue
            for index, text in enumerate(chosen):
                record = native_record(sample, text, {"k": args.k, "correct": sum(map(bool, flags))})
                record["meta"]["rejection"] = record["meta"].pop("cold_start")
                if len(chosen) > 1:
                    record["id"] = f"{sample.id}#{index}"
                records.append(record)
                lengths.append(len(text.split()))
        kept_items = len(samples) - sum(reasons.values())
        _atomic_write(out / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        report = {"input": len(samples), "kept": kept_items, "records": len(records),
                  "rejected": dict(sorted(reasons.items())), "kept_previous": previous, "tokens": tokens,
                  "rule": args.rule, "k": args.k, "model": args.model,
                  "train": str(out / "train.jsonl"), "generated_now": len(todo)}
        _atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
        _histogram(lengths, out / "lengths.png")
    finally:
        cache.close()
        lock.release()
    return report


EXAMPLES = """examples:
  mmrl build-data rejection --model runs/grpo/checkpoint --data data/synth/train.jsonl --k 8 --out data/rs
  mmrl build-data rejection --model http://127.0.0.1:8000/v1 --data data/synth/train.jsonl --k 4 --out data/rs \\
      --rule all-correct --concurrency 16
"""


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a preset, checkpoint directory or http(s)://.../v1 endpoint")
    p.add_argument("--data", required=True, help="dataset with gold answers (any format mmrl reads)")
    p.add_argument("--k", type=int, default=8, help="completions sampled per item")
    p.add_argument("--out", required=True, help="output directory: train.jsonl, report.json, cache.jsonl")
    p.add_argument("--rule", choices=RULES, default="openvlthinker")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--prompt-suffix", default=None, help="text appended to each question (e.g. format instructions)")
    p.add_argument("--keep-previous", action="store_true",
                   help="an item with no correct sample keeps its input record's response (ours, not the paper's: "
                        "the SFT set of an iterative loop never shrinks to nothing)")
    p.add_argument("--attempts", type=int, default=2, help="tries per item when the request fails")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (endpoints only)")
    p.add_argument("--max-retries", type=int, default=3, help="HTTP retries with backoff (endpoints only)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per HTTP attempt (endpoints only)")
    p.add_argument("--served-model", default=None, help="the model name the endpoint expects")
    p.add_argument("--api-key-env", default=None, help="NAME of the environment variable holding the API key")


def _run(args: argparse.Namespace) -> int:
    from mmrl.errors import UserError

    for name in ("k", "max_new_tokens", "attempts", "concurrency"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(args, name)})")
    if args.temperature < 0 or (args.limit is not None and args.limit < 1):
        raise UserError("--temperature must be >= 0 and --limit >= 1")
    report = build_rejection(args)
    rejected = ", ".join(f"{k}={v}" for k, v in report["rejected"].items()) or "none"
    print(f"kept {report['kept']} of {report['input']} items ({report['records']} records; rejected: {rejected}); "
          f"generated now: {report['generated_now']}; tokens: {report['tokens']}")
    print(f"wrote {report['train']} and {args.out}/report.json")
    return 0


register_builder("rejection", "K samples per item from a policy, verified; OpenVLThinker or keep-all-correct",
                 _args, _run, EXAMPLES)
