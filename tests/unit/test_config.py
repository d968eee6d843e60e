"""Config tree: every shipped config validates (registry names included); extends/overrides resolve as documented;
bad input, exact messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmrl.config import apply_overrides, load_config, save_resolved
from mmrl.errors import ConfigError
from mmrl.preflight import load_config as load_checked_config

ROOT = Path(__file__).resolve().parents[2]
# configs/cold_start/ holds `mmrl build-data cold-start` configs (their own schema, tested in test_cold_start_setup.py).
SHIPPED = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not {"accelerate", "cold_start"} & set(p.parts))


def test_there_are_shipped_configs():
    assert (ROOT / "configs" / "quickstart.yaml") in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_validates(path, tmp_path):
    cfg = load_checked_config(path)  # types and ranges, then every reward, estimator, loss, backend and builder name
    assert cfg.name
    # The resolved config round-trips: saving and reloading gives the same tree.
    assert load_config(save_resolved(cfg, tmp_path)).model_dump() == cfg.model_dump()


def test_accelerate_presets_are_yaml_with_a_distributed_type():
    for path in (ROOT / "configs" / "accelerate").glob("*.yaml"):
        assert "distributed_type" in yaml.safe_load(path.read_text())


def test_defaults_yaml_then_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("trainer:\n  max_steps: 7\n  seed: 3\nrollout:\n  group_size: 4\n")
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text("extends: ../base.yaml\ntrainer:\n  max_steps: 9\n")
    cfg = load_config(child, ["rollout.group_size=6", "rewards=[{name: accuracy}]", "data.train=x.jsonl"])
    assert cfg.trainer.max_steps == 9  # child wins over base
    assert cfg.trainer.seed == 3  # inherited from base
    assert cfg.rollout.group_size == 6  # override wins over YAML
    assert [r.name for r in cfg.rewards] == ["accuracy"]
    assert cfg.data.train[0].path == "x.jsonl"
    assert cfg.optimizer.lr == 1e-6  # untouched default
    assert cfg.name == "child"


def test_override_values_are_yaml_scalars_and_lists():
    cfg = load_config(None, ["optimizer.lr=3e-4", "model.lora.enabled=true", "trainer.report_to=[jsonl]",
                             "rewards.1.weight=0.25"])
    assert cfg.optimizer.lr == pytest.approx(3e-4)
    assert cfg.model.lora.enabled is True
    assert cfg.trainer.report_to == ["jsonl"]
    assert cfg.rewards[1].weight == 0.25


def test_derive_sets_dependent_values_in_one_place():
    cfg = load_config(None, ["stages=[{name: a, steps: 3}, {name: b, steps: 5}, {name: c, steps: 9, enabled: false}]",
                             "optimizer.warmup_ratio=0.25"])
    assert cfg.trainer.max_steps == 8
    from mmrl.optim import warmup_steps

    assert warmup_steps(cfg.optimizer, cfg.trainer.max_steps) == 2


def test_resolved_config_is_saved_and_reloads(tmp_path):
    cfg = load_config(None, ["trainer.max_steps=5", "rollout.group_size=3"])
    path = save_resolved(cfg, tmp_path / "run")
    again = load_config(path)
    assert again.model_dump(exclude={"name"}) == cfg.model_dump(exclude={"name"})


def test_apply_overrides_returns_a_new_validated_config():
    cfg = load_config(None)
    new = apply_overrides(cfg, {"trainer.max_steps": 4})
    assert new.trainer.max_steps == 4 and cfg.trainer.max_steps == 100
    with pytest.raises(ConfigError, match="trainer.max_steps must be >= 1"):
        apply_overrides(cfg, {"trainer.max_steps": 0})


def _error(tmp_path, text: str | None, overrides=()):
    path = None
    if text is not None:
        path = tmp_path / "x.yaml"
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value).replace(str(tmp_path), "TMP")


def test_unknown_key_suggests_the_nearest(tmp_path):
    assert _error(tmp_path, "trainer:\n  max_step: 3\n") == (
        "TMP/x.yaml: unknown key 'trainer.max_step' (did you mean 'trainer.max_steps'?)"
    )
    assert _error(tmp_path, None, ["rollout.group_sise=4"]) == (
        "command line: unknown key 'rollout.group_sise' (did you mean 'rollout.group_size'?)"
    )


def test_wrong_type(tmp_path):
    assert _error(tmp_path, None, ["trainer.max_steps=banana"]) == (
        "command line: trainer.max_steps must be an integer (got 'banana')"
    )


def test_out_of_range(tmp_path):
    assert _error(tmp_path, "rollout:\n  group_size: 1\n") == "TMP/x.yaml: rollout.group_size must be >= 2 (got 1)"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value) == f"config file not found: {tmp_path / 'nope.yaml'} (check the path; configs live in configs/)"


def test_yaml_syntax_error_names_the_line(tmp_path):
    message = _error(tmp_path, "trainer:\n  max_steps: 3\n  seed: [1, 2\nmodel: {}\n")
    assert message.startswith("TMP/x.yaml:4: YAML syntax error:")


def test_circular_extends(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "a.yaml")
    assert str(info.value) == f"{tmp_path / 'a.yaml'}: circular 'extends:' chain a.yaml -> b.yaml -> a.yaml; remove one of the extends"


def test_error_names_the_file_that_set_the_value(tmp_path):
    (tmp_path / "base.yaml").write_text("rollout:\n  group_size: 0\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\ntrainer:\n  max_steps: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "child.yaml")
    assert str(info.value) == f"{tmp_path / 'base.yaml'}: rollout.group_size must be >= 2 (got 0)"


def test_malformed_override():
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(None, ["trainer.max_steps"])


def test_a_boolean_is_not_a_number(tmp_path):
    # Lax pydantic read `true` as 1: `trainer.max_steps=true` trained one step without a word.
    assert _error(tmp_path, None, ["trainer.max_steps=true"]) == (
        "command line: trainer.max_steps must be an integer, not true/false (got true)"
    )
    assert _error(tmp_path, "optimizer:\n  lr: false\n") == (
        "TMP/x.yaml: optimizer.lr must be a number, not true/false (got false)"
    )
    assert _error(tmp_path, None, ["rollout.group_size=4", "trainer.eval_steps=true"]).startswith(
        "command line: trainer.eval_steps must be an integer")
    assert _error(tmp_path, None, ["optimizer.betas=[0.9, true]"]) == (
        "command line: optimizer.betas[1] must be a number, not true/false (got [0.9, true])"
    )
    assert _error(tmp_path, None, ["seeds=[1, false]"]) == (
        "command line: seeds[1] must be an integer, not true/false (got [1, false])")
    assert _error(tmp_path, None, ["stages=[{name: a, steps: true}]"]).startswith(
        "command line: stages.0.steps must be an integer, not true/false")
    # Assigning to a validated config is refused the same way.
    with pytest.raises(ValueError, match="must be an integer, not true/false"):
        load_config(None).trainer.max_steps = True


def test_legitimate_coercions_still_work(tmp_path):
    (tmp_path / "x.yaml").write_text("trainer:\n  max_steps: 4\noptimizer:\n  lr: 1\n  betas: [1, 0.5]\n")
    cfg = load_config(tmp_path / "x.yaml", ["rollout.group_size='3'", "trainer.seed=7", "model.lora.enabled=true"])
    assert cfg.trainer.max_steps == 4 and cfg.trainer.seed == 7 and cfg.rollout.group_size == 3
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float) and cfg.optimizer.betas == (1.0, 0.5)
    assert cfg.model.lora.enabled is True


def test_cold_start_config_refuses_a_boolean_count():
    from data_pipelines.cold_start.config import load_cold_start_config

    with pytest.raises(ConfigError) as info:
        load_cold_start_config(None, ["data=d.jsonl", "out=o", "stages.reason.concurrency=true"])
    assert str(info.value) == (
        "command line: stages.reason.concurrency: must be an integer, not true/false (got True)"
    )
