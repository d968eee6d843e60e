"""A run's configs over its segments: a resume with a changed config is refused unless the changes are named, and
every segment's config is kept.

A run may be continued many times (`trainer.resume`); each continuation is a segment. `config.yaml` holds the
latest segment's config (what `mmrl eval`, the demos and a plain re-run read), and `configs/step-<N>.yaml` the
config of the segment that started from step N (step-0: the fresh start), so the run records what every step ran
with. Resuming from checkpoint N compares the new config with the one that trained up to N: any difference outside
`SAFE_TO_CHANGE` must be listed in `trainer.resume_allow_changes` (a field or a whole section), or the run stops with
one line naming the fields.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mmrl.config import MMRLConfig
from mmrl.config.added_fields import without_added_defaults
from mmrl.config.loader import to_yaml
from mmrl.errors import UserError

SEGMENTS = "configs"
# Settings that change how a run is driven or reported, not what its steps compute, and the run's length (training
# longer or shorter is what a resume is for): a resume may change them freely.
SAFE_TO_CHANGE = (
    "trainer.max_steps",
    "trainer.eval_steps",
    "trainer.resume",
    "trainer.overwrite",
    "trainer.output_dir",
    "trainer.resume_allow_changes",
    "trainer.progress",
    "trainer.num_threads",
    "trainer.report_to",
    "trainer.save_steps",
    "trainer.save_final",
    "trainer.keep_last",
    "trainer.sample_steps",
    "trainer.max_nonfinite_steps",
    "claims",  # read by a pipeline sweep's summary, never by the run (mmrl.workflow.plan.SWEEP_ONLY)
    "seeds",
)
_SEGMENT = re.compile(r"step-(\d+)\.yaml")


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the values that differ between two plain (YAML) trees; a list is compared whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            name = f"{prefix}.{key}" if prefix else str(key)
            found += changed_fields(old.get(key), new.get(key), name)
        return found
    return [] if old == new else [prefix]


def _covered(name: str, allowed: list[str]) -> bool:
    return any(name == a or name.startswith(a + ".") for a in allowed)


def _segments(run_dir: Path) -> dict[int, Path]:
    folder = run_dir / SEGMENTS
    found = {}
    for path in folder.glob("step-*.yaml") if folder.is_dir() else ():
        match = _SEGMENT.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def config_before(run_dir: Path, step: int) -> Path | None:
    """The config that trained the run up to `step`: the segment that started last before it (a segment that started
    at `step` itself ran nothing that is kept), or config.yaml for a run written before segments were kept."""
    earlier = [start for start in _segments(run_dir) if start < step]
    if earlier:
        return _segments(run_dir)[max(earlier)]
    legacy = run_dir / "config.yaml"
    return legacy if legacy.is_file() else None


def _short(value: Any) -> str:
    """A value in at most 60 characters; its middle elided, since a path's file name is at its end."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    return text if len(text) <= 60 else text[:28] + "..." + text[-29:]


def _difference(old: Any, new: Any, where: str = "") -> str:
    """`[0].path: a -> b` for two lists or mappings that differ inside (a dataset list whose path changed): their
    first 40 characters are the same field names, so the whole values, shortened, did not show what changed."""
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        index = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
        return _difference(old[index], new[index], f"{where}[{index}]")
    if isinstance(old, dict) and isinstance(new, dict):
        key = next(k for k in [*old, *new] if old.get(k) != new.get(k))
        return _difference(old.get(key), new.get(key), f"{where}.{key}")
    return f"{where.lstrip('.')}: {_short(old)} -> {_short(new)}" if where else f"{_short(old)} -> {_short(new)}"


def check_resume_config(cfg: MMRLConfig, run_dir: Path, resume_from: Path | None) -> None:
    """One line naming the fields a resume changes without `trainer.resume_allow_changes` listing them."""
    if resume_from is None:
        return
    step = int(resume_from.name.split("-")[1])
    before = config_before(resume_from.parent.parent, step)
    if before is None:
        return
    old = yaml.safe_load(before.read_text(encoding="utf-8")) or {}
    new = without_added_defaults(old, yaml.safe_load(to_yaml(cfg)), MMRLConfig)  # a field added since: no change
    allowed = [*SAFE_TO_CHANGE, *cfg.trainer.resume_allow_changes]
    changed = [name for name in changed_fields(old, new) if not _covered(name, allowed)]
    if not changed:
        return
    shown = ", ".join(f"{name} ({_difference(_get(old, name), _get(new, name))})" for name in changed[:6])
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    raise UserError(
        f"trainer.resume: {resume_from} was trained with another config ({before}): {shown}{more}; if these changes "
        f"are intended, add trainer.resume_allow_changes=[{','.join(changed)}], else resume with the same settings "
        "or give another trainer.output_dir"
    )


def _get(tree: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def save_segment_config(cfg: MMRLConfig, run_dir: Path, start_step: int) -> Path:
    """config.yaml (the latest segment) and configs/step-<start_step>.yaml (this segment's own record)."""
    text = to_yaml(cfg)
    folder = run_dir / SEGMENTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"step-{start_step}.yaml").write_text(text, encoding="utf-8")
    path = run_dir / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path
