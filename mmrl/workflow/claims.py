"""`claims:` of a seeded pipeline: each claim's paired difference between two arms, its 95% interval over the seeds
and the verdict, in the aggregate summary.json.

The rule is fixed before any run (the config's `claims:`): "reproduced" only when the interval excludes 0 in the
paper's direction, "opposite" when it excludes 0 the other way, "not distinguishable" otherwise — and with fewer than
two seeds, where no interval exists.

>>> paired_t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303: 2 +- 4.303 / sqrt(3)
(2.0, -0.484338, 4.484338)
>>> verdict((0.1, 0.4), "greater"), verdict((0.1, 0.4), "less"), verdict((0.0, 0.4), "greater")
('reproduced', 'opposite', 'not distinguishable')
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path
from typing import Any

from mmrl.config.workflow import ClaimConfig, PipelineStep
from mmrl.errors import UserError

LEVEL = 0.95
RESAMPLES = 10_000  # bootstrap resamples of the seeds; a fixed generator, so a summary is reproducible
TREND = 5  # logged steps averaged by train.<step>.first / last (as the seeds summary's trend)
# t quantiles at 0.975 for 1..30 degrees of freedom (any statistics table); beyond, the Cornish-Fisher term below
T_975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
EVAL_MEASURES = ("accuracy", "completion_length")
TRAIN_MEASURES = ("seconds", "sampled_tokens")
WINDOWS = ("first", "last", "mean")


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom.

    >>> t_quantile(4), round(t_quantile(1000), 3)
    (2.776, 1.962)
    """
    if df < 1:
        raise ValueError(f"df must be >= 1 (got {df})")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df)


def kept(x: float) -> float:
    """`x` to 6 decimals, or to 6 significant digits when smaller: a measure like accuracy per sampled token (~1e-5)
    rounded to 6 decimals became 0, and its interval with it.

    >>> kept(4.4843384), kept(1.2345678e-05), kept(0.0)
    (4.484338, 1.23457e-05, 0.0)
    """
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, max(6, 5 - math.floor(math.log10(abs(x)))))


def paired_t_interval(differences: list[float]) -> tuple[float, float, float]:
    """(mean, low, high) of the mean paired difference at 95%; needs two or more values."""
    n = len(differences)
    mean = statistics.fmean(differences)
    half = t_quantile(n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return kept(mean), kept(mean - half), kept(mean + half)


def bootstrap_interval(differences: list[float], resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, ...]:
    """(mean, low, high): the 2.5th and 97.5th percentiles (nearest rank) of the mean of `differences` resampled
    with replacement.

    >>> bootstrap_interval([0.0, 1.0])  # resampled means 0, 0.5, 1 with chances 1/4, 1/2, 1/4
    (0.5, 0.0, 1.0)
    """
    rng = random.Random(seed)
    n = len(differences)
    means = sorted(statistics.fmean(rng.choices(differences, k=n)) for _ in range(resamples))
    low = means[max(0, math.ceil(0.025 * resamples) - 1)]
    high = means[min(resamples - 1, math.ceil(0.975 * resamples) - 1)]
    return kept(statistics.fmean(differences)), kept(low), kept(high)


def verdict(interval: tuple[float, float] | None, direction: str) -> str:
    """The rule stated before running: only an interval that excludes 0 decides, and its side says which way."""
    if interval is None:
        return "not distinguishable"
    low, high = interval
    if low > 0:
        return "reproduced" if direction == "greater" else "opposite"
    if high < 0:
        return "reproduced" if direction == "less" else "opposite"
    return "not distinguishable"


# ---- measures: what one seed's run gives a claim -----------------------------------------------------------------
def _terms(quantity: str) -> list[str]:
    parts = [part.strip() for part in quantity.split(" / ")]  # spaced: metric names hold '/' themselves
    if len(parts) > 2 or not all(parts):
        raise ValueError("a measure, or a ratio 'A / B' of two (a slash with spaces around it)")
    return parts


def check_claims(claims: list[ClaimConfig], steps: list[PipelineStep], where: str) -> None:
    """Every measure names an eval label or a train/sft step of the pipeline, and a known quantity; claim names are
    unique. Raises one UserError naming the claim and the field."""
    labels = {s.args.get("label", s.name) for s in steps if s.kind == "eval"}
    trained = {s.name for s in steps if s.kind in ("train", "sft")}
    seen: set[str] = set()
    for i, claim in enumerate(claims):
        at = f"{where}: claims.{i} ('{claim.name}')"
        if claim.name in seen:
            raise UserError(f"{at}: duplicate claim name; give each claim its own name")
        seen.add(claim.name)
        for field in ("arm", "baseline"):
            try:
                for term in _terms(getattr(claim, field)):
                    _check_measure(term, labels, trained)
            except ValueError as err:
                raise UserError(f"{at}: {field} '{getattr(claim, field)}': {err}") from None


def _check_measure(term: str, labels: set[str], trained: set[str]) -> None:
    parts = term.split(".")
    if parts[0] == "eval" and len(parts) == 3:
        if parts[1] not in labels:
            raise ValueError(f"no eval step labelled '{parts[1]}'; eval labels: {', '.join(sorted(labels)) or 'none'}")
        if parts[2] not in EVAL_MEASURES:
            raise ValueError(f"an eval measure is one of {', '.join(EVAL_MEASURES)} (got '{parts[2]}')")
        return
    if parts[0] == "train" and len(parts) >= 3:
        if parts[1] not in trained:
            raise ValueError(f"no train or sft step '{parts[1]}'; steps: {', '.join(sorted(trained)) or 'none'}")
        if len(parts) == 3 and parts[2] in TRAIN_MEASURES:
            return
        if len(parts) >= 4 and parts[2] in WINDOWS:
            return
        raise ValueError(f"a train measure is {' | '.join(TRAIN_MEASURES)} or <{'|'.join(WINDOWS)}>.<metric>")
    raise ValueError("a measure is eval.<label>.<quantity> or train.<step>.<quantity>")


def _rows(step: dict[str, Any]) -> list[dict[str, Any]]:
    from mmrl.eval.plots import read_metrics

    run_dir = step.get("outputs", {}).get("run_dir")
    path = Path(run_dir) / "metrics.jsonl" if run_dir else None
    return read_metrics(path) if path is not None and path.is_file() else []


def measure(term: str, summary: dict[str, Any]) -> float | None:
    """One seed's value of a measure, from that seed's summary.json content (None when it is missing)."""
    parts = term.split(".")
    if parts[0] == "eval":
        step = next(
            (s for s in summary["steps"].values() if s["kind"] == "eval" and s["outputs"].get("label") == parts[1]),
            None,
        )
        value = (step or {}).get("metrics", {}).get(parts[2])
    else:
        step = summary["steps"].get(parts[1])
        if step is None:
            return None
        if len(parts) == 3 and parts[2] == "seconds":
            value = step.get("seconds")
        elif len(parts) == 3:  # sampled_tokens
            rows = _rows(step)
            value = sum(r.get("completion_tokens", 0) for r in rows) if rows else None
        else:
            key = ".".join(parts[3:])
            values = [
                float(r[key])
                for r in sorted((r for r in _rows(step) if "step" in r), key=lambda r: r["step"])
                if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
            ]
            window = {"first": values[:TREND], "last": values[-TREND:], "mean": values}[parts[2]]
            value = statistics.fmean(window) if window else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def quantity(expression: str, summary: dict[str, Any]) -> float | None:
    terms = [measure(term, summary) for term in _terms(expression)]
    if any(t is None for t in terms):
        return None
    return terms[0] / terms[1] if len(terms) == 2 and terms[1] else (terms[0] if len(terms) == 1 else None)


def evaluate_claim(claim: ClaimConfig, per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The claim's per-seed values and differences, the mean difference with its 95% interval, and the verdict."""
    rows = {}
    for seed, summary in per_seed.items():
        arm, base = quantity(claim.arm, summary), quantity(claim.baseline, summary)
        rows[str(seed)] = {
            "arm": arm,
            "baseline": base,
            "difference": None if arm is None or base is None else arm - base,
        }
    differences = [r["difference"] for r in rows.values() if r["difference"] is not None]
    out: dict[str, Any] = {
        "paper": claim.paper,
        "arm": claim.arm,
        "baseline": claim.baseline,
        "direction": claim.direction,
        "method": claim.interval,
        "level": LEVEL,
        "n": len(differences),
        "per_seed": rows,
    }
    if len(differences) < 2:
        out.update(
            difference=kept(differences[0]) if differences else None,
            interval=None,
            verdict=verdict(None, claim.direction),
            note="fewer than 2 seeds with both arms: no interval",
        )
        return out
    mean, low, high = (paired_t_interval if claim.interval == "paired_t" else bootstrap_interval)(differences)
    out.update(difference=mean, interval=[low, high], verdict=verdict((low, high), claim.direction))
    return out


def evaluate_claims(claims: list[ClaimConfig], per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return {claim.name: evaluate_claim(claim, per_seed) for claim in claims}


def claims_table(claims: dict[str, Any]) -> str:
    """Markdown: each claim's direction, mean difference, 95% interval, seeds and verdict."""
    lines = [
        "| claim | paper says | difference (arm - baseline) | 95% interval | seeds | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in claims.items():
        sign = ">" if c["direction"] == "greater" else "<"
        shown = "-" if c["difference"] is None else f"{c['difference']:.4g}"
        interval = "-" if c["interval"] is None else f"[{c['interval'][0]:.4g}, {c['interval'][1]:.4g}]"
        lines.append(f"| {name} | arm {sign} baseline | {shown} | {interval} | {c['n']} | {c['verdict']} |")
    return "\n".join(lines) + "\n"
