"""Evaluation harness: generation (`generate`), scoring shared with the rewards (`scoring`), metrics and reports.

Entry point: `mmrl.eval.evaluate.evaluate(model, processor, samples, eval_cfg, data_cfg, out_dir)`; CLI: `mmrl eval`.
"""

from mmrl.eval.metrics import mean_at_k, pass_at_k

__all__ = ["mean_at_k", "pass_at_k"]
