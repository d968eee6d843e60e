"""Reward worker processes must not re-run a user's unguarded training script (spawn/forkserver re-import __main__)."""

from __future__ import annotations

import subprocess
import sys


def test_an_unguarded_script_runs_once(tmp_path):
    counter = tmp_path / "count"
    script = tmp_path / "train_script.py"
    script.write_text(
        "from mmrl.rewards.composite import RewardComposite\n"
        f"open({str(counter)!r}, 'a').write('x')\n"
        "with RewardComposite([{'name': 'accuracy'}]) as c:\n"
        "    print(c.score(['<answer>$2$</answer>'], {'answer': ['2'], 'task': ['math']}).total)\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "[1.0]" in result.stdout
    assert counter.read_text() == "x"  # once: the workers did not import the script again
