"""Rejection-sampled SFT data: `mmrl build-data rejection --model PATH|URL --data D --k K --out DIR`.

K completions per item from a policy (any generation backend), each verified against the gold with the accuracy
check of the item's task; a selection rule picks the SFT targets:

- `openvlthinker` (OpenVLThinker, Deng et al. 2025): keep the correct ones; exactly one correct: keep it; several:
  sort them by length in words, drop the longest and keep the next longest; none: the item yields nothing.
- `all-correct`: every correct completion becomes a record (ids `<id>#<k>`; input ids these could repeat, such as
  `x` next to `x#0`, are refused before sampling: `check_output_ids`).

Same per-item cache (`<out>/cache.jsonl`: resumable, a finished build re-run generates nothing; each line carries a
fingerprint of the model, sampling parameters and exact prompt, so a changed setting regenerates instead of reusing)
and report (`report.json`: items kept + rejected per reason + failed per reason == input; tokens spent; the model,
a URL redacted) as the cold-start builder. A request that got no answer (timeout, dropped connection, 5xx/429 after
retries) is a *failure*: reported, never cached, retried by the next run; when every item failed, the command exits
1 naming the endpoint. `--keep-previous` (ours): an item the policy never solves keeps the response its input record
had: the row says so (`meta.rejection.carried_over: true`) and the report counts it as `kept_previous`.

>>> select(["a b c", "a b", "a b c d", "x"], [True, True, True, False], "openvlthinker")
['a b c']
>>> select(["a b", "x"], [True, False], "openvlthinker"), select(["a", "b"], [False, False], "all-correct")
(['a b'], [])
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from data_pipelines.builder_args import bounded
from data_pipelines.inputs import MAX_NEW_TOKENS, MAX_SEED
from data_pipelines.registry import register_builder
from mmrl.errors import UserError

RULES = ("openvlthinker", "all-correct")
DEFAULT_CONCURRENCY = 8  # requests in flight to an endpoint when --concurrency is not given
MAX_K = 256  # samples per item: one request generates them all at once, so an absurd K is refused up front


def select(texts: list[str], correct: list[bool], rule: str) -> list[str]:
    """The SFT targets among `texts` (in sampling order for `all-correct`)."""
    good = [t for t, ok in zip(texts, correct) if ok]
    if rule == "all-correct" or len(good) <= 1:
        return good
    # Stable sort: among equal lengths the earlier sample wins, so the choice is reproducible.
    by_length = sorted(good, key=lambda t: len(t.split()), reverse=True)
    return [by_length[1]]


def check_output_ids(samples: list[Any], k: int, rule: str) -> None:
    """Refuse, before anything is sampled, input ids that the records' ids could repeat.

    `all-correct` names the records of item `x` `x#0` .. `x#<k-1>`, so an input id `x#<n>` (n < k) next to `x` -- one
    the data gave, or a repeated `x` the loader renamed `x#<line>` -- would collide with one of them. Two records
    with one id (the loader's renaming never makes them; this guards samples from anywhere) would make the SFT set's
    ids ambiguous (and a cache or a later dedup drop one), so the build stops naming both.
    """
    ids: dict[str, Any] = {}
    for sample in samples:
        if sample.id in ids:
            raise UserError(f"{sample.meta.get('source', sample.id)}: id '{sample.id}' repeats the id of "
                            f"{ids[sample.id].meta.get('source', 'another record')}; give every record a distinct id")
        ids[sample.id] = sample
    if rule != "all-correct":
        return  # one record per item, under the item's own id
    for sample in samples:
        base, sep, number = sample.id.rpartition("#")
        if sep and number.isdigit() and base in ids and int(number) < k:
            raise UserError(f"{sample.meta.get('source', sample.id)}: input id '{sample.id}' would collide with "
                            f"record {int(number)} of item '{base}' ({ids[base].meta.get('source', base)}), which "
                            f"--rule all-correct names '{base}#0'..'{base}#{k - 1}'; give the records distinct ids "
                            "(a repeated id is renamed '<id>#<line>')")


def _correct(text: str, finish: str, sample: Any, model_frame: str | None = None) -> bool | None:
    from mmrl.rewards.accuracy import verify_answer
    from mmrl.rewards.extraction import extract_answer

    if finish == "length":
        return False  # a cut-off completion is never a target
    columns = {k: v for k, v in sample.reward_columns().items() if k not in ("answer", "task", "choices")}
    columns["model_frame"] = model_frame  # a grounding answer is read in the policy's own frame
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


def _fingerprint(sample: Any, args: argparse.Namespace) -> str:
    """Everything that determines an item's K samples (not the rule or --keep-previous: applied when writing)."""
    from data_pipelines.cold_start.remote import describe_model, fingerprint, prompt_view

    return fingerprint(model=describe_model(args.model), served_model=args.served_model, k=args.k,
                       temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed,
                       attempts=args.attempts,
                       prompt=prompt_view(_prompt(sample, args.system_prompt, args.prompt_suffix).messages))


def _model_frame(samples: list[Any], args: argparse.Namespace) -> str | None:
    """The frame the policy answers boxes/points in (`--pred-frame`, else from its config.json), when an item is
    checked by its coordinates; one line when nobody can tell (an endpoint, a family with no published frame)."""
    from data_pipelines.cold_start.remote import redact_url
    from mmrl.generation.load import is_server_url
    from mmrl.models.interface import COORDINATE_TASKS, frame_of_config
    from mmrl.models.loading import resolve_model_path

    if args.pred_frame != "auto":
        return args.pred_frame
    tasks = sorted({s.task for s in samples} & set(COORDINATE_TASKS))
    if not tasks:
        return None
    why = "it is an endpoint"
    if not is_server_url(args.model):
        config = Path(resolve_model_path(args.model)) / "config.json"
        frame, why = frame_of_config(json.loads(config.read_text()) if config.is_file() else {})
        if frame is not None:
            return frame
    raise UserError(f"--model {redact_url(args.model)}: {'/'.join(tasks)} items are checked by the predicted "
                    f"coordinates, but the model's frame is unknown ({why}); give --pred-frame")


def _sample_item(backend: Any, sample: Any, args: argparse.Namespace, opened: str = "") -> dict[str, Any]:
    """The cache entry of one item, or a failure (`failed: True`: no answer; never cached). `opened`: the part of the
    turn the policy's chat template wrote before the completion (an opened `<think>`): the texts are whole turns,
    the SFT targets a thinking template expects to render (`mmrl.models.interface`)."""
    from data_pipelines.cold_start.remote import classify
    from mmrl.generation import SamplingParams
    from mmrl.generation.load import is_server_url

    params = SamplingParams(n=args.k, temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                            seed=args.seed)
    reason, failed = "empty", False
    for _ in range(args.attempts):
        try:
            completions = backend.generate([_prompt(sample, args.system_prompt, args.prompt_suffix)], params)[0]
        except Exception as err:  # noqa: BLE001 - classified; unknown errors re-raised
            kind = classify(err, is_server_url(args.model))
            if kind is None:
                raise
            reason, failed = kind
            continue
        tokens = sum(c.n_tokens or len(c.text.split()) for c in completions)
        return {"ok": True, "texts": [(opened + c.text).strip() for c in completions],
                "finish": [c.finish_reason for c in completions], "tokens": tokens}
    return {"ok": False, "reason": reason, "tokens": 0, **({"failed": True} if failed else {})}


def _generate(todo: list[Any], fps: dict[str, str], cache: Any, args: argparse.Namespace) -> dict[str, str]:
    """Sample every item of `todo` into the cache; returns {sample id: failure reason} for those that got no answer."""
    from concurrent.futures import ThreadPoolExecutor

    from data_pipelines.cold_start.remote import open_backend
    from mmrl.generation.load import is_server_url
    from mmrl.models.interface import interface_of_backend
    from mmrl.runs.logger import item_progress

    remote = is_server_url(args.model)
    concurrency = args.concurrency or DEFAULT_CONCURRENCY
    kw = ({"served_model": args.served_model, "api_key_env": args.api_key_env, "concurrency": concurrency,
           "max_retries": args.max_retries, "timeout": args.timeout} if remote else {})
    backend = open_backend(args.model, "--api-key-env", field="--model", **kw)
    opened = interface_of_backend(backend).turn_prefix  # "" for an endpoint: an OpenAI server returns whole turns
    failures: dict[str, str] = {}

    def one(sample: Any) -> None:
        entry = _sample_item(backend, sample, args, opened)
        if entry.pop("failed", False):
            failures[sample.id] = entry["reason"]
        else:
            cache.put(sample.id, "sample", fps[sample.id], **entry)

    bar = item_progress(len(todo), "rejection")
    with ThreadPoolExecutor(max_workers=concurrency if remote else 1) as pool:
        futures = [pool.submit(one, s) for s in todo]
        try:
            for future in futures:
                future.result()
                bar.update(1)
                bar.set_postfix(failed=len(failures), refresh=False)
        finally:
            for future in futures:
                future.cancel()
            bar.close()
    return failures


def build_rejection(args: argparse.Namespace) -> dict[str, Any]:
    from data_pipelines.cold_start.build import _atomic_write, _histogram, native_record
    from data_pipelines.cold_start.cache import StageCache
    from data_pipelines.cold_start.remote import check_reached, redact_url, warn_endpoint_only
    from data_pipelines.inputs import check_image_files
    from mmrl.data.dataset import load_samples
    from mmrl.generation.load import is_server_url
    from mmrl.runs.directory import RunDirLock

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_samples(args.data)[: args.limit] if args.limit else load_samples(args.data)
    check_image_files(samples)
    check_output_ids(samples, args.k, args.rule)
    model_frame = _model_frame(samples, args)
    if not is_server_url(args.model):
        given = [flag for flag, value in (("--served-model", args.served_model), ("--api-key-env", args.api_key_env),
                                          ("--concurrency", args.concurrency)) if value is not None]
        warn_endpoint_only("build-data rejection", given, [args.model])
    lock = RunDirLock(out)
    lock.acquire()
    cache = StageCache(out / "cache.jsonl")
    try:
        fps = {s.id: _fingerprint(s, args) for s in samples}
        todo = [s for s in samples if cache.get(s.id, "sample", fps[s.id]) is None]
        failures = _generate(todo, fps, cache, args) if todo else {}
        records, reasons, failed, tokens, lengths, previous = [], Counter(), Counter(), 0, [], 0
        for sample in samples:
            entry = cache.get(sample.id, "sample", fps[sample.id])
            if entry is None:
                failed[failures.get(sample.id, "not_run")] += 1
                continue
            tokens += entry["tokens"]
            if not entry["ok"]:
                reasons[entry["reason"]] += 1
                continue
            flags = [_correct(t, f, sample, model_frame) for t, f in zip(entry["texts"], entry["finish"])]
            if any(f is None for f in flags):
                reasons["gold_unusable"] += 1
                continue
            chosen = select(entry["texts"], [bool(f) for f in flags], args.rule)
            carried = not chosen and args.keep_previous and bool(sample.response)
            if carried:
                chosen, previous = [sample.response], previous + 1
            if not chosen:
                reasons["none_correct"] += 1
                continue
            for index, text in enumerate(chosen):
                record = native_record(sample, text, {"k": args.k, "correct": sum(map(bool, flags)),
                                                      "carried_over": carried})
                record["meta"]["rejection"] = record["meta"].pop("cold_start")
                if len(chosen) > 1:
                    record["id"] = f"{sample.id}#{index}"
                records.append(record)
                lengths.append(len(text.split()))
        kept_items = len(samples) - sum(reasons.values()) - sum(failed.values())
        _atomic_write(out / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        report = {"input": len(samples), "kept": kept_items, "records": len(records),
                  "rejected": dict(sorted(reasons.items())), "failed": dict(sorted(failed.items())),
                  "kept_previous": previous, "tokens": tokens, "rule": args.rule, "k": args.k,
                  "model": redact_url(args.model), "train": str(out / "train.jsonl"), "generated_now": len(todo)}
        _atomic_write(out / "report.json", json.dumps(report, indent=2) + "\n")
        _histogram(lengths, out / "lengths.png")
    finally:
        cache.close()
        lock.release()
    check_reached(Counter(failures.values()), len(todo), {"": (args.model, "--model")})
    return report


EXAMPLES = """examples:
  mmrl build-data rejection --model runs/quickstart/grpo/checkpoints/step-200 --data runs/quickstart/data/train.jsonl \\
      --k 8 --out data/rs
  mmrl build-data rejection --model http://127.0.0.1:8000/v1 --data runs/quickstart/data/train.jsonl --k 4 --out data/rs \\
      --rule all-correct --concurrency 16
"""


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a preset, checkpoint directory or http(s)://.../v1 endpoint")
    p.add_argument("--data", required=True, help="dataset with gold answers (any format mmrl reads)")
    p.add_argument("--k", type=bounded(int, 1, MAX_K), default=8, help="completions sampled per item")
    p.add_argument("--out", required=True, help="output directory: train.jsonl, report.json, cache.jsonl")
    p.add_argument("--rule", choices=RULES, default="openvlthinker")
    p.add_argument("--temperature", type=bounded(float, 0, 10), default=1.0)
    p.add_argument("--max-new-tokens", type=bounded(int, 1, MAX_NEW_TOKENS), default=512)
    p.add_argument("--seed", type=bounded(int, 0, MAX_SEED), default=0)
    p.add_argument("--limit", type=bounded(int, 1), default=None, help="only the first N items")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--prompt-suffix", default=None, help="text appended to each question (e.g. format instructions)")
    p.add_argument("--keep-previous", action="store_true",
                   help="an item with no correct sample keeps its input record's response (ours, not the paper's: "
                        "the SFT set of an iterative loop never shrinks to nothing)")
    p.add_argument("--attempts", type=bounded(int, 1, 10), default=2, help="tries per item when the request fails")
    p.add_argument("--concurrency", type=bounded(int, 1, 512), default=None,
                   help=f"requests in flight (endpoints only; default {DEFAULT_CONCURRENCY})")
    p.add_argument("--max-retries", type=bounded(int, 0, 20), default=3,
                   help="HTTP retries with backoff (endpoints only)")
    p.add_argument("--timeout", type=bounded(float, 1), default=300.0,
                   help="seconds per HTTP attempt (endpoints only)")
    p.add_argument("--served-model", default=None, help="the model name the endpoint expects")
    p.add_argument("--pred-frame", choices=("auto", "pixel", "input_pixel", "norm1000", "norm1"), default="auto",
                   help="frame the model answers boxes/points in (auto: from its config.json; needed for an endpoint "
                        "when grounding/gui items are checked)")
    p.add_argument("--api-key-env", default=None, help="NAME of the environment variable holding the API key")


def _run(args: argparse.Namespace) -> int:
    # Ranges are checked by the schema's types (`bounded`), for the command line and pipeline steps alike.
    report = build_rejection(args)
    rejected = ", ".join(f"{k}={v}" for k, v in report["rejected"].items()) or "none"
    print(f"kept {report['kept']} of {report['input']} items ({report['records']} records, "
          f"{report['kept_previous']} carried over; rejected: {rejected}); "
          f"generated now: {report['generated_now']}; tokens: {report['tokens']}")
    print(f"wrote {report['train']} and {args.out}/report.json")
    if report["failed"]:
        failed = ", ".join(f"{k}={v}" for k, v in report["failed"].items())
        print(f"warning: {sum(report['failed'].values())} items got no answer ({failed}); they are not in the "
              "output: re-run the same command to retry them", file=sys.stderr)
    return 0


register_builder("rejection", "K samples per item from a policy, verified; OpenVLThinker or keep-all-correct",
                 _args, _run, EXAMPLES)
