"""A weighted sum of rewards from config, with per-component scores, counters and one example per failure kind.

    rewards: [{name: accuracy, weight: 1.0}, {name: format, weight: 0.5}]

`total` is the weighted sum; it is None when any component with a non-zero weight is None for that item — a partial
sum would silently change the reward's scale for that item (accuracy None + format 1 would look like a half-right
answer), so the trainer skips the item instead. Zero-weight components are reported but never block the total.

Execution: built-in rewards marked `heavy` (math-verify, `cosine_length`) are scored item by item in killable worker
processes (`safe.WorkerPool`); cheap ones (format, boxes, GUI, length) run in-process on the whole batch — a pipe
round-trip would cost more than they do. User `file.py:function` rewards are batched by contract (an LLM judge
batches its requests), so they get the whole batch in one call, in a worker process, under the time the items one by
one would have had (`timeout_s` x items per worker; in-process, x items); only when that call fails, runs out of time
or returns the wrong number of scores is the batch scored item by item as the heavy built-ins are. `workers=0` runs everything in-process (heavy items one by one under `call_with_timeout`; a call
stuck in C code then cannot be killed).

Time limits are per completion (`timeout_s`, default the spec's 5 s). A cheap reward's batch call runs under that one
limit; if it fails or runs out of time, the batch is scored again item by item, each under its own limit, so one slow
or crashing item costs only itself (except `batched` rewards, which need the whole batch). A completion that runs out
of time on an item the reward can score scores 0.0 and is counted as `<name>/timeouts`; only an item that cannot be
scored whatever the completion (a bad gold) is None (see `safe.score_item`).

Several answer blocks: a completion with more than one `<answer>` (or `</answer>`) tag has no answer for every reward
that reads it (`extract_answer`), the same rule as `format`; it scores as a missing answer and is counted as
`<name>/multiple_answers` for each such reward.

>>> with RewardComposite([{"name": "accuracy"}, {"name": "format", "weight": 0.5}], workers=0) as rc:
...     r = rc.score(["<think>x</think><answer>3</answer>"], {"answer": ["3"], "task": ["count"]})
>>> r.total, r.components["format"]
([1.5], [1.0])
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from mmrl.config.rl import RewardSpec
from mmrl.errors import UserError
from mmrl.rewards.extraction import has_multiple_answers
from mmrl.rewards.registry import get_reward, is_batched, is_file_spec, kwargs_problem
from mmrl.rewards.safe import (
    KILLED,
    Outcome,
    WorkerPool,
    call_with_timeout,
    probe_outcome,
    score_item,
    timeout_outcome,
)
from mmrl.runs.threads import reward_workers

log = logging.getLogger(__name__)
NOT_BATCHED = "expected a list of one value"  # the message of a reward that returned a scalar for one completion


@dataclass
class RewardResult:
    """Scores for one batch: `total[i]`, `components[name][i]`, `counters["<name>/<kind>"]`, `examples[name]`."""

    total: list[float | None]
    components: dict[str, list[float | None]]
    counters: dict[str, int] = field(default_factory=dict)
    examples: dict[str, dict[str, Any]] = field(default_factory=dict)


def _clean(value: Any) -> float | None:
    """A reward value as float; None, NaN and non-numbers become None (unscorable), never 0."""
    if value is None or isinstance(value, str):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _user_reward(fn) -> bool:
    """A user's `file.py:function` (or module) reward: written for whole batches, so it is given them."""
    return not hasattr(fn, "mmrl_reward_name")


def _default_tags(fn) -> tuple[str, str] | None:
    """The answer tags a reward reads when its spec does not set `tags`: its signature's default, else `<answer>`."""
    try:
        param = inspect.signature(fn).parameters.get("tags")
    except (TypeError, ValueError):
        param = None
    return param.default if param is not None else ("<answer>", "</answer>")


class RewardComposite:
    """Score completions with several weighted rewards (see the module docstring)."""

    def __init__(self, specs: list[RewardSpec] | list[dict], timeout_s: float | None = None, workers: int | None = None):
        self.specs = [s if isinstance(s, RewardSpec) else RewardSpec(**s) for s in specs]
        if not self.specs:
            raise UserError("rewards: give at least one reward, e.g. [{name: accuracy, weight: 1.0}]")
        names = [s.name for s in self.specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise UserError(f"rewards: '{duplicates[0]}' is listed twice; combine its weights into one entry")
        self.fns = [get_reward(s.name) for s in self.specs]  # unknown names fail here, before training starts
        for spec, fn in zip(self.specs, self.fns, strict=True):  # a kwargs typo too (the config loader checks first)
            problem = kwargs_problem(spec.name, fn, spec.kwargs) if spec.kwargs else None
            if problem is not None:
                raise UserError(f"rewards: '{spec.name}' kwargs: {problem}")
        self.timeouts = [timeout_s or s.timeout_s for s in self.specs]
        # the CPUs this trainer process may use, not the machine's: 4 workers per rank on a 2-core share thrash
        self.workers = reward_workers() if workers is None else workers
        self.targets = [self._target(s.name, fn) for s, fn in zip(self.specs, self.fns, strict=True)]
        self._pool: WorkerPool | None = None
        self.counters: dict[str, int] = {}  # cumulative over the composite's life
        self._logged: set[str] = set()

    @staticmethod
    def _target(name: str, fn) -> tuple[str, str] | None:
        """How a worker process finds this reward, or None when only this process can run it (scored in-process)."""
        heavy = getattr(fn, "mmrl_heavy", not hasattr(fn, "mmrl_reward_name"))
        if not heavy or getattr(fn, "mmrl_batched", False) is True:
            return None
        if is_file_spec(name):
            return ("file", name)
        module = getattr(fn, "__module__", "__main__")
        if module.startswith("mmrl.rewards"):
            return ("name", name)
        return None if module == "__main__" else ("module", f"{module}:{name}")

    def _get_pool(self) -> WorkerPool:
        if self._pool is None:
            self._pool = WorkerPool(self.workers)
        return self._pool

    def score(self, completions: list[str], columns: dict[str, list]) -> RewardResult:
        """Score a batch; `columns` maps a column name to one value per completion."""
        n = len(completions)
        for key, values in columns.items():
            if not isinstance(values, (list, tuple)) or len(values) != n:
                raise ValueError(f"reward column '{key}' must be a list of {n} values (one per completion)")
        rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
        outcomes: dict[str, list[Outcome]] = {}
        pooled = [(s, t, timeout) for s, fn, t, timeout in zip(self.specs, self.fns, self.targets, self.timeouts, strict=True)
                  if t is not None and self.workers > 0 and not is_batched(fn, s.kwargs)]  # fmt: skip
        if pooled and n:
            users = {s.name for s, fn in zip(self.specs, self.fns, strict=True) if _user_reward(fn)}
            outcomes.update(self._pooled_batches([p for p in pooled if p[0].name in users], completions, columns))
            rest = [p for p in pooled if p[0].name not in outcomes]
            if rest:
                outcomes.update(self._pooled(rest, completions, rows))
        for spec, fn, target, timeout in zip(self.specs, self.fns, self.targets, self.timeouts, strict=True):
            if spec.name in outcomes:
                continue
            heavy = getattr(fn, "mmrl_heavy", True)
            if _user_reward(fn) and n:  # whole batch first (its limit: every item's), then item by item if it fails
                outcomes[spec.name] = self._batch(fn, completions, columns, spec.kwargs, timeout, timeout * n)
            elif not is_batched(fn, spec.kwargs) and (target is not None or heavy):
                outcomes[spec.name] = [self._guarded_item(fn, completions[i], rows[i], spec.kwargs, timeout)
                                       for i in range(n)]  # fmt: skip
            else:
                outcomes[spec.name] = self._batch(fn, completions, columns, spec.kwargs, timeout)
        self._check_batched(outcomes)
        return self._assemble(completions, rows, outcomes)

    def _pooled(self, pooled, completions, rows) -> dict[str, list[Outcome]]:
        """Heavy rewards in the worker pool; items whose worker was killed get a second, probe-only pass."""
        n = len(completions)
        jobs = [(s.name, t, s.kwargs, timeout, [(i, completions[i], rows[i]) for i in range(n)])
                for s, t, timeout in pooled]  # fmt: skip
        chunk = max(1, min(64, -(-n * len(pooled) // (self.workers * 4))))
        found = self._get_pool().run(jobs, chunk_size=chunk)
        killed = [(s.name, t, s.kwargs, timeout, [(i, "", rows[i]) for i in range(n)
                   if found[(s.name, i)].status == "timeout" and found[(s.name, i)].message == KILLED])
                  for s, t, timeout in pooled]  # fmt: skip
        killed = [job for job in killed if job[4]]
        if killed:
            probes = self._get_pool().run(killed, chunk_size=1, mode="probe")
            for name, *_, items in killed:
                for i, _, _ in items:
                    probe = probes[(name, i)]
                    found[(name, i)] = probe_outcome(probe) or timeout_outcome(probe, KILLED)
        return {s.name: [found[(s.name, i)] for i in range(n)] for s, _, _ in pooled}

    def _pooled_batches(self, pooled, completions, columns) -> dict[str, list[Outcome]]:
        """User rewards in the worker pool, each called once on the whole batch (an LLM judge batches its requests)
        under the time the pool would have given its items one by one (the limit x items per worker). A reward whose batch call fails, runs out of time or returns the
        wrong number of scores is left out: the caller scores it item by item, so one bad item costs only itself."""
        n = len(completions)
        share = max(1, -(-n // self.workers))  # items per worker had the pool scored them one by one
        jobs = [(s.name, t, s.kwargs, timeout * share, [(0, list(completions), columns)]) for s, t, timeout in pooled]
        found = self._get_pool().run(jobs, chunk_size=1, mode="batch") if jobs else {}
        out: dict[str, list[Outcome]] = {}
        for spec, _, _ in pooled:
            result = found[(spec.name, 0)]
            if result.status == "ok" and isinstance(result.value, (list, tuple)) and len(result.value) == n:
                out[spec.name] = [Outcome("ok", v) for v in result.value]
        return out

    @staticmethod
    def _guarded_item(fn, completion: str, row: dict, kwargs: dict, timeout) -> Outcome:
        return score_item(fn, completion, row, kwargs, timeout)

    @staticmethod
    def _check_batched(outcomes: dict[str, list[Outcome]]) -> None:
        """A reward written per item (one float per call) fails on every item: say so instead of scoring all None."""
        for name, found in outcomes.items():
            if found and all(o.status == "error" and NOT_BATCHED in o.message for o in found):
                raise UserError(f"reward '{name}' returns a single value per call ({found[0].message}); rewards are "
                                "batched: fn(completions: list[str], **columns) -> list[float | None], one score "
                                "per completion")

    def _batch(self, fn, completions, columns, kwargs, timeout, batch_timeout=None) -> list[Outcome]:
        """Cheap rewards: one call for the whole batch under the per-completion limit (every item then took less;
        user rewards: `batch_timeout`, the limit of all items together); on an exception or a timeout, score item by
        item, each under its own limit (see the module docstring)."""
        n = len(completions)
        out = call_with_timeout(fn, batch_timeout or timeout, list(completions), **columns, **kwargs)
        if out.status == "ok" and (not isinstance(out.value, (list, tuple)) or len(out.value) != n):
            out = Outcome("error", message=f"reward returned {type(out.value).__name__} of the wrong length (need {n})")
        if out.status == "ok":
            return [Outcome("ok", v) for v in out.value]
        if not is_batched(fn, kwargs):
            rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
            return [self._guarded_item(fn, completions[i], rows[i], kwargs, timeout) for i in range(n)]
        return [Outcome(out.status, None, out.message)] * n

    def _assemble(self, completions, rows, outcomes: dict[str, list[Outcome]]) -> RewardResult:
        components: dict[str, list[float | None]] = {}
        counters: dict[str, int] = {}
        examples: dict[str, dict[str, Any]] = {}
        for spec, fn in zip(self.specs, self.fns, strict=True):
            values: list[float | None] = []
            for i, outcome in enumerate(outcomes[spec.name]):
                value = _clean(outcome.value) if outcome.status in ("ok", "timeout") else None
                values.append(value)
                if value is None or outcome.status == "timeout":
                    kind = {"ok": "unscorable", "gold_timeout": "unscorable", "timeout": "timeouts"}.get(
                        outcome.status, "errors")
                    counters[f"{spec.name}/{kind}"] = counters.get(f"{spec.name}/{kind}", 0) + 1
                    if spec.name not in examples:
                        examples[spec.name] = {
                            "index": i, "kind": kind, "message": outcome.message or f"reward returned {outcome.value!r}",
                            "id": rows[i].get("id"), "answer": repr(rows[i].get("answer"))[:200],
                            "completion": completions[i][:300],
                        }  # fmt: skip
            components[spec.name] = values
            if getattr(fn, "mmrl_reads_answer", False):
                tags = spec.kwargs.get("tags", _default_tags(fn))
                hedged = sum(has_multiple_answers(c, tags) for c in completions)
                if hedged:  # scored as no answer (extract_answer); counted so a policy drifting there shows up
                    counters[f"{spec.name}/multiple_answers"] = counters.get(f"{spec.name}/multiple_answers", 0) + hedged
        for key, count in counters.items():
            self.counters[key] = self.counters.get(key, 0) + count
        for name, example in examples.items():
            if name not in self._logged:  # one logged example per component, not one per step
                self._logged.add(name)
                log.warning("reward '%s': item %s %s (%s)", name, example["id"] or example["index"], example["kind"],
                            example["message"])  # fmt: skip
        total: list[float | None] = []
        for i in range(len(completions)):
            parts = [(s.weight, components[s.name][i]) for s in self.specs if s.weight != 0]
            total.append(None if any(v is None for _, v in parts) else sum(w * v for w, v in parts))  # type: ignore[misc]
        return RewardResult(total, components, counters, examples)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> RewardComposite:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
