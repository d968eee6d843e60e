"""`mmrl pipeline`: a recipe of steps (build data -> SFT -> GRPO stages -> eval), each step's output feeding the next.

Steps write into `<output_dir>/<step name>/` and mark themselves finished with `DONE.json`; re-running skips finished
steps and resumes an interrupted one (see `runner.py`). The run ends with `<output_dir>/summary.json`.

>>> from mmrl.workflow import run_pipeline
>>> summary = run_pipeline("configs/quickstart.yaml", ["model.name_or_path=tiny"])  # doctest: +SKIP
>>> summary["accuracy"]  # doctest: +SKIP
{'base': 0.25, 'sft': 0.5, 'grpo': 0.75}
"""

from mmrl.workflow.plan import Plan, load_plan, step_config
from mmrl.workflow.runner import read_done, run_pipeline

__all__ = ["Plan", "load_plan", "read_done", "run_pipeline", "step_config"]
