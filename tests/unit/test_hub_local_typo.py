"""A mistyped local model path (`runs/grpo_tny` beside `runs/grpo_tiny`) on a machine without a network: the one-line
error names the local folder and the near name, instead of asking the reader to `hf download runs/grpo_tny`."""

from __future__ import annotations

import pytest

from mmrl.errors import UserError
from mmrl.models import hub


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "_offline", lambda: False)
    monkeypatch.setattr(hub, "unreachable_reason", lambda timeout_s=0: "huggingface.co:443: Name or service not known")
    monkeypatch.setattr(hub, "is_cached", lambda repo_id: False)
    (tmp_path / "runs" / "grpo_tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)


def test_a_mistyped_run_directory_is_named_as_a_path(no_network):
    with pytest.raises(UserError) as err:
        hub.local_files_only("runs/grpo_tny")
    message = str(err.value)
    assert message.startswith("model.name_or_path: 'runs/grpo_tny' is not a directory (runs/ has no 'grpo_tny'; ")
    assert "did you mean 'runs/grpo_tiny'?" in message and "hf download" not in message and "\n" not in message


def test_a_hub_id_without_a_local_folder_keeps_the_hub_message(no_network):
    with pytest.raises(UserError) as err:
        hub.local_files_only("Qwen/Qwen2.5-VL-3B-Instruct")
    assert "is not in the Hugging Face cache" in str(err.value) and "hf download Qwen/Qwen2.5-VL-3B-Instruct" in str(
        err.value
    )
