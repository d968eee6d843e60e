"""A hub id without a network: one line at once (the hub client retried for about 40 s before its error), and a
cached id loads from the cache alone. The process runs without HF_HUB_OFFLINE, its endpoint a port that refuses
connections (what a machine without a network meets), and its own empty hub cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import json, sys, time
from mmrl.config.model import ModelConfig
from mmrl.errors import UserError
from mmrl.models.loading import load_policy
from transformers import AutoConfig, AutoModelForImageTextToText  # imported before the clock starts
out = {}
started = time.perf_counter()
try:
    load_policy(ModelConfig(name_or_path="nobody/not-cached"), for_training=False)
except UserError as err:
    out["error"] = str(err)
out["seconds"] = time.perf_counter() - started
loaded = load_policy(ModelConfig(name_or_path="cached/tiny"), for_training=False)
out["cached"] = type(loaded.model).__name__
print(json.dumps(out))
"""


def test_hub_ids_fail_fast_or_load_from_the_cache_without_a_network(tiny_model_dir, tmp_path):
    snapshot = tmp_path / "hub" / "models--cached--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (tmp_path / "hub" / "models--cached--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--cached--tiny" / "refs" / "main").write_text("0" * 40)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_CACHE=str(tmp_path / "hub"), PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["error"].startswith("model.name_or_path: 'nobody/not-cached' is not in the Hugging Face cache and "
                                   "the hub cannot be reached (127.0.0.1:9: Connection refused)")
    assert "\n" not in out["error"] and out["seconds"] < 10  # was 20-40 s of retries
    assert out["cached"].endswith("ForConditionalGeneration")
