"""CLI smoke tests through the real `mmrl` entry point: config show, build-tiny, one-line errors with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def mmrl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["mmrl", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert expected in lines[0], lines[0]


def test_help_lists_commands_with_examples():
    result = mmrl("--help")
    assert result.returncode == 0
    for command in ("train", "sft", "eval", "config", "model", "data", "reward"):
        assert command in result.stdout
    assert "examples:" in result.stdout
    sub = mmrl("config", "show", "--help")
    assert sub.returncode == 0 and "examples:" in sub.stdout


def test_config_show_prints_the_resolved_config():
    result = mmrl("config", "show", "configs/quickstart.yaml", "trainer.max_steps=7")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["trainer"]["max_steps"] == 7 or resolved["stages"]
    assert resolved["name"] == "quickstart"
    assert resolved["model"]["name_or_path"]


def test_bad_inputs_give_one_line_and_exit_2(tmp_path):
    assert_one_line_error(mmrl("config", "show", "configs/quickstart.yaml", "trainer.max_stepz=3"),
                          "unknown key 'trainer.max_stepz' (did you mean 'trainer.max_steps'?)")
    assert_one_line_error(mmrl("config", "show", "configs/quickstart.yaml", "trainer.max_steps=banana"),
                          "trainer.max_steps must be an integer (got 'banana')")
    assert_one_line_error(mmrl("config", "show", "configs/quickstart.yaml", "trainer.max_steps=true"),
                          "trainer.max_steps must be an integer, not true/false (got true)")
    assert_one_line_error(mmrl("config", "show", "configs/quickstart.yaml", "rollout.group_size=1"),
                          "rollout.group_size must be >= 2 (got 1)")
    assert_one_line_error(mmrl("config", "show", str(tmp_path / "missing.yaml")), "config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name_or_path: [tiny\n")
    assert_one_line_error(mmrl("config", "show", str(bad)), f"{bad}:3: YAML syntax error")
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    assert_one_line_error(mmrl("config", "show", str(tmp_path / "a.yaml")), "circular 'extends:' chain")


def test_debug_shows_the_traceback():
    result = mmrl("config", "show", "configs/quickstart.yaml", "trainer.max_steps=banana", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_unknown_model_path_is_one_line():
    from mmrl.config import load_config
    from mmrl.errors import UserError
    from mmrl.models.loading import load_policy

    for name in ("./no/such/model", "/definitely/not/here"):
        try:
            load_policy(load_config(None, [f"model.name_or_path={name}"]).model)
        except UserError as err:
            assert str(err).startswith(f"model.name_or_path: '{name}' does not exist")
        else:
            raise AssertionError("expected a UserError")


def test_build_tiny_gives_a_directory_plain_transformers_generates_with(tmp_path):
    out = tmp_path / "tiny"
    result = mmrl("model", "build-tiny", str(out), "--preset", "tiny")
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout
    script = (
        "import torch\n"
        "from PIL import Image\n"
        "from transformers import AutoModelForImageTextToText\n"
        "from mmrl.models.processor import load_processor\n"
        f"m = AutoModelForImageTextToText.from_pretrained({str(out)!r})\n"
        f"p = load_processor({str(out)!r})\n"
        "msgs = [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'Color?'}]}]\n"
        "t = p.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)\n"
        "x = p(text=[t], images=[Image.new('RGB', (56, 56), 'blue')], return_tensors='pt')\n"
        "o = m.generate(**x, max_new_tokens=5, do_sample=False)\n"
        "print('generated', o.shape[1] - x['input_ids'].shape[1])\n"
    )
    gen = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert gen.returncode == 0, gen.stderr
    assert "generated" in gen.stdout
