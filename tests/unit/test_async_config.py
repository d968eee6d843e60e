"""`rollout.max_staleness`: refused in one line where one rollout worker beside one trainer cannot do what is asked."""

from __future__ import annotations

import pytest

from mmrl.config import load_config
from mmrl.rl.async_rollout import sampled_version


def test_the_default_is_the_synchronous_loop():
    assert load_config(None).rollout.max_staleness == 0


ASYNC = "rollout.max_staleness=1"


@pytest.mark.parametrize(
    "overrides, says",
    [
        ([ASYNC, "rollout.backend=vllm"], "needs rollout.backend=hf"),
        ([ASYNC, "algorithm.tis_cap=null"], "set algorithm.tis_cap"),
        ([ASYNC, "model.compile=true"], "set model.compile=false"),
        ([ASYNC, "stages=[{name: a, steps: 2, until_metric: accuracy, until_value: 0.5}]"], "remove until_metric"),
        (["rollout.max_staleness=-1"], "max_staleness"),
        ([ASYNC, "env.name=zoom_digit"], "multi-turn episodes"),
        ([ASYNC, "rollout.worker_timeout_s=0"], "worker_timeout_s"),
    ],
)
def test_unsupported_combinations_are_refused_in_one_line(overrides, says):
    with pytest.raises(Exception, match=says) as error:
        load_config(None, overrides)
    assert "Traceback" not in str(error.value)


def test_ddp_is_accepted_and_sharded_engines_are_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert load_config(None, [ASYNC]).rollout.max_staleness == 1  # DDP: each rank its own worker
    refill = [ASYNC, "algorithm.online_filter.enabled=true"]
    with pytest.raises(Exception, match="online_filter.max_tries=1"):  # the ranks' refills need the process group
        load_config(None, refill)
    assert load_config(None, [*refill, "algorithm.online_filter.max_tries=1"]).algorithm.online_filter.enabled
    for variable, says in [("ACCELERATE_USE_FSDP", "FSDP2"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")]:
        with monkeypatch.context() as env:
            env.setenv(variable, "true")
            with pytest.raises(Exception, match=f"under {says} .* launch with the DDP preset") as error:
                load_config(None, [ASYNC])
            assert "Traceback" not in str(error.value)
            assert load_config(None).rollout.max_staleness == 0  # the synchronous loop runs on every engine


def test_each_step_is_sampled_by_the_version_k_steps_before_it_never_before_the_start():
    assert [sampled_version(t, 0, 2) for t in range(6)] == [0, 0, 0, 1, 2, 3]
    assert [sampled_version(t, 3, 1) for t in range(3, 7)] == [3, 3, 4, 5]
