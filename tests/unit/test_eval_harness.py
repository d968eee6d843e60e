"""evaluate() end to end on the tiny preset: report files, breakdown, determinism, RNG left untouched."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mmrl.config import load_config
from mmrl.data.sample import Sample
from mmrl.errors import DataError
from mmrl.eval.evaluate import evaluate
from mmrl.eval.generate import generate_completions
from mmrl.eval.report import build_report
from mmrl.eval.scoring import score_generations
from mmrl.generation.decoding import TextDecoder, eos_token_ids
from mmrl.models.loading import load_policy


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_policy(load_config(None).model, for_training=False)


@pytest.fixture()
def samples(tmp_path):
    items = []
    specs = [("red", "count", "2", "shapes"), ("blue", "yes_no", "yes", "shapes"),
             ("green", "math", "3/4", "arith"), ("white", "math", "forty two", None)]
    for i, (color, task, answer, category) in enumerate(specs):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (56, 56), color).save(path)
        meta = {"category": category} if category else {}
        items.append(Sample(id=f"s{i}", prompt="What do you see?", answer=answer, task=task, images=[str(path)],
                            meta=meta))
    return items


def test_evaluate_greedy_writes_report_markdown_and_generations(tiny, samples, tmp_path):
    cfg = load_config(None, ["eval.max_new_tokens=6", "eval.batch_size=3"])
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    report = evaluate(tiny.model, tiny.processor, samples, cfg.eval, cfg.data, tmp_path / "out", progress=False)
    assert torch.equal(torch.rand(3), expected_next)  # evaluation leaves the caller's RNG stream alone
    out = tmp_path / "out"
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["accuracy"] == report["accuracy"]
    assert report["n"] == 4 and report["k"] == 1 and report["unscorable"] == 1 and report["scored"] == 3
    assert report["unscorable_ids"] == ["s3"] and "excluded" in report["note"]
    assert set(report["by_task"]) == {"count", "yes_no", "math"} and report["by_task"]["math"]["n"] == 2
    assert set(report["by_category"]) == {"shapes", "arith"}
    assert "pass@1" not in report and 1 <= report["completion_length"] <= 6
    table = (out / "report.md").read_text()
    assert table.startswith("| group | n | scored | accuracy |") and "task: yes_no" in table
    records = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["s0", "s1", "s2", "s3"]
    assert all(len(r["generations"]) == 1 and len(r["scores"]) == 1 for r in records)
    assert records[3]["unscorable"] and records[0]["images"][0].endswith("img0.png")
    # The saved generations re-score to the saved scores: the report is about what the model wrote.
    rescored = score_generations(samples, [r["generations"] for r in records])
    assert [it.scores for it in rescored] == [r["scores"] for r in records]
    # Greedy is deterministic, whatever the batch size.
    again = generate_completions(tiny.model, tiny.processor, samples, cfg.data, max_new_tokens=6, batch_size=1)
    assert [[c.text for c in item] for item in again] == [r["generations"] for r in records]


def test_evaluate_sampled_k_is_seeded_and_reports_pass_at_k(tiny, samples, tmp_path):
    cfg = load_config(None, ["eval.max_new_tokens=5", "eval.k=3", "eval.greedy=false", "eval.limit=2"])
    first = evaluate(tiny.model, tiny.processor, samples, cfg.eval, cfg.data, tmp_path / "a", progress=False)
    second = evaluate(tiny.model, tiny.processor, samples, cfg.eval, cfg.data, tmp_path / "b", progress=False)
    assert first["n"] == 2 and first["k"] == 3 and {"pass@1", "pass@2", "pass@3", "mean@k"} <= set(first)
    gens_a = (tmp_path / "a" / "generations.jsonl").read_text()
    assert gens_a == (tmp_path / "b" / "generations.jsonl").read_text()
    texts = [json.loads(line)["generations"] for line in gens_a.splitlines()]
    assert all(len(t) == 3 for t in texts) and len({*texts[0], *texts[1]}) > 1  # sampled, not 3 copies
    assert first["accuracy"] == second["accuracy"]


def test_decode_keeps_answer_tags_and_strips_only_end_and_padding(tiny):
    tok = tiny.processor.tokenizer
    ids = tok.encode("<think>x</think><answer>3</answer>", add_special_tokens=False)
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    decoder = TextDecoder(tok, eos_token_ids(tiny.model, tok), pad)
    assert eos in decoder.strip_ids and pad in decoder.strip_ids
    assert decoder.text([*ids, eos, pad, pad]) == "<think>x</think><answer>3</answer>"


def test_empty_dataset_is_a_user_error(tiny, tmp_path):
    cfg = load_config(None)
    with pytest.raises(DataError, match="empty"):
        evaluate(tiny.model, tiny.processor, [], cfg.eval, cfg.data, tmp_path)


def test_evaluate_on_synthetic_samples_and_oracle_responses_score_one(tiny, tmp_path):
    from data_pipelines.synthetic.builder import build_synthetic
    from mmrl.data.dataset import load_samples

    path = build_synthetic(["count", "color", "grounding", "add"], n=4, seed=0, out_dir=tmp_path / "syn",
                           forms=["open"], image_size=56)
    samples = load_samples(str(path))
    # The builder's reference responses are right answers: the harness must score every one of them 1.0.
    oracle = build_report(score_generations(samples, [[s.response] for s in samples]), k=1)
    assert oracle["accuracy"] == 1.0 and oracle["unscorable"] == 0
    assert set(oracle["by_category"]) == {"count", "color", "grounding", "add"}
    cfg = load_config(None, ["eval.max_new_tokens=6"])
    report = evaluate(tiny.model, tiny.processor, samples, cfg.eval, cfg.data, tmp_path / "out", progress=False)
    assert report["n"] == 4 and set(report["by_task"]) == {"count", "text", "grounding", "number"}
    assert (tmp_path / "out" / "report.md").read_text().count("| category: ") == 4
