"""Synthetic visual tasks with verifiable answers (colour, counting, position, grounding, reading, adding).

>>> import tempfile
>>> from data_pipelines.synthetic import build_synthetic
>>> build_synthetic(["color", "count"], n=6, seed=1, out_dir=tempfile.mkdtemp(), image_size=56).name
'data.jsonl'
"""

from data_pipelines.synthetic.builder import FORMS, build_synthetic, generate, make_item
from data_pipelines.synthetic.tasks import TASKS

__all__ = ["FORMS", "TASKS", "build_synthetic", "generate", "make_item"]
