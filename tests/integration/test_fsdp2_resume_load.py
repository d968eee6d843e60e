"""FSDP2's resume loader (`FSDP2Engine.load_weights`) meets a checkpoint the way the single-process loader does:
the weights read into the live model's own config (a damaged config.json is not obeyed), damage is one line.

A one-process gloo group is enough here: `fully_shard` over one rank is the same DTensor machinery as over two."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.distributed as dist

from mmrl.config.model import ModelConfig
from mmrl.errors import UserError
from mmrl.models.loading import load_policy
from mmrl.parallel.distributed import DistInfo
from mmrl.parallel.fsdp2 import FSDP2Engine


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _fsdp2_engine(tiny_model_dir) -> tuple[FSDP2Engine, torch.nn.Module]:
    model = load_policy(ModelConfig(name_or_path=str(tiny_model_dir), dtype="fp32"), device="cpu").model
    engine = FSDP2Engine(model, DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu")))
    engine.start()
    return engine, model


def test_fsdp2_resume_reads_weights_into_the_live_config(one_rank_group, tiny_model_dir, tmp_path):
    # config.json `{}` would mean the class defaults (a 7B allocation); a wrong size stands in for it here
    ckpt = tmp_path / "step-1"
    shutil.copytree(tiny_model_dir, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"]["hidden_size"] = 64
    (ckpt / "config.json").write_text(json.dumps(config))
    engine, _ = _fsdp2_engine(tiny_model_dir)
    expected = {k: v.clone() for k, v in engine.full_weights().items()}
    engine.wrapped.reshard()  # zero the shards themselves (what full_weights and the optimizer read)
    with torch.no_grad():
        for param in engine.module.parameters():
            param.zero_()
    engine.wrapped.unshard()
    assert all(float(v.abs().max()) == 0.0 for v in engine.full_weights().values())
    assert engine.load_weights(ckpt)
    got = engine.full_weights()
    assert sorted(got) == sorted(expected) and all(torch.equal(got[k], v) for k, v in expected.items())


def test_fsdp2_resume_of_damaged_weights_is_one_line(one_rank_group, tiny_model_dir, tmp_path):
    ckpt = tmp_path / "step-1"
    shutil.copytree(tiny_model_dir, ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    engine, _ = _fsdp2_engine(tiny_model_dir)
    with pytest.raises(UserError, match="cannot read the model weights") as err:
        engine.load_weights(ckpt)
    assert "\n" not in str(err.value)
