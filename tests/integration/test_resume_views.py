"""Every process resumes from the same checkpoint or none does: two nodes that see different run directories
(no shared filesystem) used to resume one rank and start the other fresh — different weights after DDP's initial
broadcast, different step counts, a hang at the end."""

from __future__ import annotations

import json

import pytest

from tests.integration.launch import FIXTURES, launcher, run


@pytest.mark.parametrize("views", ["same", "rank0-only"])
def test_processes_agree_on_the_checkpoint_they_resume(tmp_path, port_args, views):
    run([*launcher("ddp", port_args), str(FIXTURES / "resume_views.py"), str(tmp_path), views])
    records = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in records] == [2, 2]  # two processes ran
    if views == "same":
        assert [r.get("resume") for r in records] == ["step-3", "step-3"]
        return
    for record in records:  # both stop, with the same one line naming the field and the fix
        assert "error" in record and "\n" not in record["error"], record
        assert "trainer.output_dir" in record["error"] and "step-3" in record["error"]
