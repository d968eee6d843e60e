"""The data of every recipe's offline line, in one directory (`mmrl build-data recipes`, into `data/`).

- `synth/train.jsonl`, `synth/eval.jsonl`: colour and counting questions (open + multiple choice) with CoT targets —
  GRPO recipes (grpo_tiny, mm_eureka, dr_grpo, Vision-R1 PTST) and the cold-start SFT.
- `boxes/train.jsonl`: referring boxes (grounding, pixels) — vlm_r1_rec.
- `gui/train.jsonl`, `gui/eval.jsonl`: rendered screens with UI-R1 actions — ui_r1.
- `curriculum/stage1_yes_no.jsonl`, `stage2_mc.jsonl`, `stage3_open.jsonl`, `eval.jsonl`: Curr-ReFT stages, from
  open colour/count/grounding questions.

Small on purpose (tens of items, 56-pixel images, 112-pixel screens): built in seconds, read by runs of a minute.

>>> import tempfile
>>> sorted(build_recipe_data(tempfile.mkdtemp(), n=8))[:3]
['boxes/train', 'curriculum/eval', 'curriculum/open']
"""

from __future__ import annotations

from pathlib import Path

from data_pipelines.synthetic import build_synthetic


def build_recipe_data(out_dir: str | Path, seed: int = 0, n: int = 64) -> dict[str, Path]:
    """Build every offline dataset under `out_dir`; returns {"<dir>/<split>": path}."""
    out = Path(out_dir)
    paths: dict[str, Path] = {}
    small = {"image_size": 56}
    for split, count, split_seed in (("train", n, seed), ("eval", max(4, n // 4), seed + 1)):
        paths[f"synth/{split}"] = build_synthetic(["color", "count"], count, split_seed, out / "synth",
                                                  forms=["open", "mc"], split=split, **small)
        paths[f"gui/{split}"] = build_synthetic(["gui"], count, split_seed, out / "gui", image_size=112, split=split)
    paths["boxes/train"] = build_synthetic(["grounding"], n, seed, out / "boxes", forms=["open"], split="train",
                                           **small)
    # Curr-ReFT derives its three stages from open questions with verifiable answers.
    open_path = build_synthetic(["color", "count", "grounding"], n, seed, out / "curriculum", forms=["open"],
                                split="open", **small)
    paths["curriculum/open"] = open_path
    paths["curriculum/eval"] = build_synthetic(["color", "count"], max(4, n // 4), seed + 1, out / "curriculum",
                                              forms=["open"], split="eval", **small)
    from data_pipelines.curriculum import build_curriculum

    for name, path in build_curriculum(open_path, out / "curriculum", seed=seed).items():
        paths[f"curriculum/{name}"] = path
    return paths
