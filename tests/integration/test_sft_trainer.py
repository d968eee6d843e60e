"""Cold-start SFT on the tiny model: the loss falls, only assistant tokens are learned, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmrl.config import load_config
from mmrl.errors import UserError
from mmrl.runs.logger import read_metrics
from mmrl.sft.trainer import sft_steps, train_sft

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tests" / "grpo_tiny.yaml"


@pytest.fixture(scope="module")
def cot_data(tmp_path_factory) -> Path:
    from data_pipelines.synthetic import build_synthetic

    return build_synthetic(["color"], 16, 0, tmp_path_factory.mktemp("cot"), forms=["open"], image_size=56)


def sft_overrides(data: Path, out: Path, **extra) -> list[str]:
    base = {"data.train": str(data), "trainer.output_dir": str(out), "trainer.report_to": "[jsonl]",
            "trainer.progress": "false", "trainer.batch_size": 4, "trainer.max_steps": 6, "optimizer.lr": 2e-3}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def test_sft_learns_the_targets_and_resumes_exactly(cot_data, tmp_path):
    straight = train_sft(load_config(CONFIG, sft_overrides(cot_data, tmp_path / "a")))
    losses = [r["loss"] for r in read_metrics(straight)]
    assert len(losses) == 6 and losses[-1] < losses[0] * 0.9  # falls steadily: 6.9 -> 5.5 here

    split = tmp_path / "b"
    train_sft(load_config(CONFIG, sft_overrides(cot_data, split, **{"trainer.max_steps": 3})))
    train_sft(load_config(CONFIG, sft_overrides(cot_data, split, **{"trainer.resume": "auto"})))
    assert [r["loss"] for r in read_metrics(split)] == losses
    from safetensors.torch import load_file

    a = load_file(str(straight / "checkpoints" / "step-6" / "model.safetensors"))
    b = load_file(str(split / "checkpoints" / "step-6" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loss_is_the_mean_over_assistant_tokens_only(cot_data):
    """Hand check on one sample: the loss equals -mean log p(response tokens + <|im_end|>), nothing of the prompt."""
    from mmrl.data.collate import encode_sft
    from mmrl.data.dataset import load_samples
    from mmrl.models.loading import load_policy
    from mmrl.sft.trainer import label_logprobs

    cfg = load_config(CONFIG, [f"data.train={cot_data}"])
    loaded = load_policy(cfg.model, for_training=False)
    sample = load_samples(str(cot_data), cfg.data)[0]
    batch = encode_sft(loaded.processor, [sample], cfg.data)
    tokenizer = loaded.processor.tokenizer
    labelled = batch["labels"][0][batch["labels"][0] != -100].tolist()
    assert tokenizer.decode(labelled) == sample.response + "<|im_end|>"
    image_pad = loaded.processor.image_token_id
    assert image_pad in batch["input_ids"][0].tolist() and image_pad not in labelled
    with torch.no_grad():
        scores, count = label_logprobs(loaded.model, batch)
        logits = loaded.model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
    positions = (batch["labels"][0] != -100).nonzero().view(-1)
    by_hand = torch.log_softmax(logits[positions - 1], dim=-1).gather(1, batch["labels"][0][positions, None]).view(-1)
    assert int(count) == len(labelled)
    assert torch.allclose(scores, by_hand, atol=1e-5)


def test_epochs_decide_the_number_of_steps_and_missing_targets_are_named(cot_data, tmp_path):
    cfg = load_config(CONFIG, sft_overrides(cot_data, tmp_path, **{"trainer.num_epochs": 2, "trainer.batch_size": 5}))
    assert sft_steps(cfg, 16) == 7  # ceil(2 * 16 / 5)
    no_target = tmp_path / "plain.jsonl"
    record = json.loads(Path(cot_data).read_text().splitlines()[0])
    record.pop("response")
    record["images"] = [str(Path(cot_data).parent / record["images"][0])]
    no_target.write_text(json.dumps(record) + "\n")
    with pytest.raises(UserError, match=r"sample .* has no target response"):
        train_sft(load_config(CONFIG, sft_overrides(no_target, tmp_path / "run")))
