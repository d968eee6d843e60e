"""`mmrl build-data rejection` output ids are unique: input ids that `--rule all-correct`'s `<id>#<k>` records could
repeat (`x` next to `x#0`, or a repeated `x` the loader renamed `x#<line>`) are refused with one line before any
request is sent; where no collision is possible the build runs and every output id is distinct."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from mmrl.cli import main
from tests.integration.test_rejection_builder import scripted_server  # noqa: F401 - the scripted policy server


def _data(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    """(id, scripted item) rows: q0 has three correct completions, q1 one, q2 none."""
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": f"[{q}] How many?", "answer": "3", "task": "count"}) + "\n"
                            for i, q in rows))
    return path


def _argv(url: str, data: Path, out: Path, k: int, rule: str) -> list[str]:
    return ["build-data", "rejection", "--model", url, "--data", str(data), "--k", str(k), "--out", str(out),
            "--rule", rule, "--max-retries", "0", "--attempts", "1"]


def test_x_and_x_hash_0_are_refused_before_sampling(scripted_server, tmp_path, capsys):  # noqa: F811
    data = _data(tmp_path, [("x", "q0"), ("x#0", "q1")])
    assert main(_argv(scripted_server.url, data, tmp_path / "out", 4, "all-correct")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert "data.jsonl:2" in err[0] and "'x#0'" in err[0] and "item 'x'" in err[0] and "distinct ids" in err[0]
    assert scripted_server.posts == 0 and not (tmp_path / "out" / "train.jsonl").exists()


def test_one_record_per_item_rules_keep_the_input_ids(scripted_server, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    data = _data(tmp_path, [("x", "q0"), ("x#0", "q1")])
    assert main(_argv(scripted_server.url, data, out, 4, "openvlthinker")) == 0
    ids = [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert ids == ["x", "x#0"]


def test_a_repeated_id_renamed_by_the_loader_is_refused_only_where_it_can_collide(scripted_server, tmp_path,  # noqa: F811
                                                                                 capsys):
    data = _data(tmp_path, [("x", "q0"), ("x", "q0")])  # the loader names the second one 'x#2'
    assert main(_argv(scripted_server.url, data, tmp_path / "near", 4, "all-correct")) == 2
    assert "'x#2'" in capsys.readouterr().err and scripted_server.posts == 0
    # Renamed 'x#5' (line 5) is out of reach of x#0..x#3: the build runs and every output id is distinct.
    far = tmp_path / "far"
    far.mkdir()
    data = _data(far, [("x", "q0"), ("y", "q2"), ("z", "q2"), ("w", "q2"), ("x", "q0")])
    out = tmp_path / "out"
    assert main(_argv(scripted_server.url, data, out, 4, "all-correct")) == 0
    ids = [json.loads(line)["id"] for line in (out / "train.jsonl").read_text().splitlines()]
    assert ids == ["x#0", "x#1", "x#2", "x#5#0", "x#5#1", "x#5#2"]
    assert max(Counter(ids).values()) == 1


def test_an_id_the_loader_renaming_repeats_is_refused_for_every_rule(scripted_server, tmp_path, capsys):  # noqa: F811
    # The loader renames the 'x' of line 3 'x#3', which line 2 already holds.
    data = _data(tmp_path, [("x", "q1"), ("x#3", "q1"), ("x", "q1")])
    assert main(_argv(scripted_server.url, data, tmp_path / "out", 4, "openvlthinker")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'x#3'" in err[0] and "data.jsonl:3" in err[0] and "data.jsonl:2" in err[0]
    assert scripted_server.posts == 0
