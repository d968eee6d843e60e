"""The scaling benchmark's argument checks and table layout (no benchmark run: its cells are given here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _scaling():
    spec = importlib.util.spec_from_file_location("bench_grpo_scaling", ROOT / "benchmarks" / "grpo_scaling.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


scaling = _scaling()


@pytest.mark.parametrize("argv", [["--group-sizes", "4,x"], ["--group-sizes", "1,8"], ["--lengths", "0"],
                                  ["--steps", "0"]])
def test_bad_grids_are_refused_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        scaling.parse_args(argv)
    assert exit_.value.code == 2
    assert len([line for line in capsys.readouterr().err.splitlines() if "error:" in line]) == 1


def test_table_has_a_row_per_cell_and_a_grid_by_g_and_length():
    args = scaling.parse_args(["--group-sizes", "4,16", "--lengths", "64,256"])
    cells = [{"G": g, "length": n, "samples/s": g * 1000.0 / n, "s/step": 1.0, "prefill": 0.2, "prompt fwd": 0.1,
              "useful GFLOP": 1.0, "matmul GFLOP/s": 50.0, "fraction": 0.5}
             for g in args.group_sizes for n in args.lengths]
    text = scaling.markdown(cells, args)
    lines = text.splitlines()
    assert lines[2].startswith("| 4 | 64 | 62.50 |") and lines[5].startswith("| 16 | 256 | 62.50 |")
    assert "| 4 | 62.50 | 15.62 |" in lines and "| 16 | 250.00 | 62.50 |" in lines
