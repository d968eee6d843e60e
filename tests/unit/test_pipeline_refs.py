""""{step.output}" references in pipeline step overrides and build-data argv (the iterative SFT<->RL loop)."""

from __future__ import annotations

import pytest

from mmrl.errors import UserError
from mmrl.workflow.refs import resolve_refs

OUTPUTS = {"rl_data": {"train": "/runs/rl_data/train/data.jsonl"}}


def test_a_reference_becomes_the_earlier_steps_output_in_nested_values():
    value = {"data.train": "{rl_data.train}", "argv": ["--data", "{rl_data.train}", "--k", 4]}
    assert resolve_refs(value, OUTPUTS, "w", {"rl_data", "sft_2"}) == {
        "data.train": "/runs/rl_data/train/data.jsonl", "argv": ["--data", "/runs/rl_data/train/data.jsonl", "--k", 4]}


def test_braces_that_name_no_step_stay_as_written():
    assert resolve_refs(r"\frac{1.5}{2}", OUTPUTS, "w", {"rl_data"}) == r"\frac{1.5}{2}"
    assert resolve_refs("{rl_data.train}", None, "w") == "{rl_data.train}"  # validation time: nothing ran yet


@pytest.mark.parametrize("ref", ["{rl_data.eval}", "{sft_2.checkpoint}"])
def test_an_unknown_output_or_a_later_step_is_a_one_line_error(ref):
    with pytest.raises(UserError, match="is no output of an earlier step; known: \\['rl_data.train'\\]"):
        resolve_refs(ref, OUTPUTS, "cfg.yaml: pipeline step 'x'", {"rl_data", "sft_2"})


def test_paths_inside_key_value_strings_are_what_a_step_reads(tmp_path):
    # the cold-start builder takes "data=<path>" overrides: the whole string made absolute matched no step's folder
    from mmrl.workflow.runner import path_candidates

    found = path_candidates(f"data={tmp_path}/runs/data/train.jsonl describe.model={tmp_path}/runs/sft/step-2")
    assert f"{tmp_path}/runs/data/train.jsonl" in found and f"{tmp_path}/runs/sft/step-2" in found
    assert path_candidates("plain words") == []
