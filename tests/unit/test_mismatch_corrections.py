"""Rollout/trainer mismatch corrections (`algorithm.is_correction`) and their diagnostics, hand-computed from the
formulas of TRL's vllm_importance_sampling_mode documentation, MIS and IcePop (TRL's implementation sits inline in
its generation step and cannot run on given tensors, so these are the formulas with numbers worked by hand)."""

from __future__ import annotations

import math

import pytest
import torch

from mmrl.errors import UserError
from mmrl.preflight import load_config
from mmrl.rl.mismatch import IS_CORRECTIONS, MismatchBounds, mismatch_weights

# trainer/sampler probability ratios per token: row 0 [1, 1.5, 5], row 1 [0.25, 2.5, (padding)]
OLD = torch.log(torch.tensor([[0.5, 0.3, 0.5], [0.1, 0.5, 0.7]]))
SAMPLER = torch.log(torch.tensor([[0.5, 0.2, 0.1], [0.4, 0.2, 1e-30]]))
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
R = [[1.0, 1.5, 5.0], [0.25, 2.5]]
SEQ = [7.5, 0.625]  # products of each row's active ratios


def weights(mode: str, cap: float | None = 3.0, floor: float | None = None) -> tuple[list, dict]:
    w, m = mismatch_weights(mode, OLD, SAMPLER, MASK, MismatchBounds(cap, floor))
    return w.tolist(), m


@pytest.mark.parametrize(("mode", "floor", "expected"), [
    ("token_truncate", None, [[1.0, 1.5, 3.0], [0.25, 2.5, 1.0]]),
    ("token_truncate", 0.5, [[1.0, 1.5, 3.0], [0.5, 2.5, 1.0]]),
    ("token_mask", None, [[1.0, 1.5, 0.0], [0.25, 2.5, 1.0]]),
    ("token_mask", 0.5, [[1.0, 1.5, 0.0], [0.0, 2.5, 1.0]]),
    ("sequence_truncate", None, [[3.0, 3.0, 3.0], [0.625, 0.625, 1.0]]),
    ("sequence_mask", None, [[0.0, 0.0, 0.0], [0.625, 0.625, 1.0]]),
    ("sequence_mask", 0.7, [[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    ("icepop", None, [[1.0, 1.5, 0.0], [0.0, 2.5, 1.0]]),  # kept inside [1/3, 3]: 5 and 0.25 masked
])
def test_each_mode_by_hand(mode, floor, expected):
    got, metrics = weights(mode, floor=floor)
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), atol=1e-5), got
    active = [expected[0][0], expected[0][1], expected[0][2], expected[1][0], expected[1][1]]
    assert metrics["tis_weight_mean"] == pytest.approx(sum(active) / 5, rel=1e-5)
    squares = sum(w * w for w in active) / 5
    assert metrics["is_ess"] == pytest.approx((sum(active) / 5) ** 2 / squares if squares else 0.0, rel=1e-5)


def test_diagnostics_by_hand():
    _, m = weights("token_truncate")
    ratios = R[0] + R[1]
    assert m["chi2_token"] == pytest.approx(sum(r * r for r in ratios) / 5 - 1, rel=1e-5)  # 7.6125
    # per sequence, each weighted by its tokens (3 and 2), so the figure adds up over micro-batches
    assert m["chi2_seq"] == pytest.approx((3 * SEQ[0] ** 2 + 2 * SEQ[1] ** 2) / 5 - 1, rel=1e-5)
    assert m["logprob_kl"] == pytest.approx(sum(r - 1 - math.log(r) for r in ratios) / 5, rel=1e-5)
    assert m["logprob_abs_diff_max"] == pytest.approx(math.log(5), rel=1e-5)
    assert m["tis_clip_frac"] == pytest.approx(1 / 5)  # only 5 was truncated
    agree, m0 = mismatch_weights("sequence_mask", OLD, OLD, MASK, MismatchBounds(3.0))
    assert torch.equal(agree, torch.ones_like(agree)) and m0["chi2_token"] == 0 and m0["is_ess"] == 1.0


@pytest.mark.parametrize("mode", sorted(IS_CORRECTIONS.names()))
def test_hostile_sampler_logprobs(mode):
    """A token the engine could not score (NaN) gets weight 1 and no NaN reaches the loss or the figures; a token the
    sampler gave probability 0 (-inf) has an infinite ratio: truncated to the cap, or masked."""
    sampler = SAMPLER.clone()
    sampler[0, 0] = math.nan
    sampler[1, 1] = -math.inf
    w, m = mismatch_weights(mode, OLD, sampler, MASK, MismatchBounds(3.0))
    assert not torch.isnan(w).any() and all(not math.isnan(v) for v in m.values()), (w, m)
    assert w[1, 1].item() in (3.0, 0.0)
    if mode.startswith("token") or mode == "icepop":
        assert w[0, 0].item() == 1.0


def test_registry_and_config_checks():
    assert IS_CORRECTIONS.names() == ["icepop", "sequence_mask", "sequence_truncate", "token_mask", "token_truncate"]
    assert load_config(None, []).algorithm.is_correction == "token_truncate"  # today's TIS stays the default
    cfg = load_config(None, ["algorithm.is_correction=sequence_mask", "algorithm.tis_cap=3", "algorithm.tis_floor=0.5"])
    assert (cfg.algorithm.is_correction, cfg.algorithm.tis_floor) == ("sequence_mask", 0.5)
    for overrides, message in [
        (["algorithm.is_correction=token_clip"], "algorithm.is_correction: unknown importance-sampling correction"),
        (["algorithm.is_correction=icepop", "algorithm.tis_cap=1"], "icepop keeps ratios inside"),
        (["algorithm.is_correction=icepop", "algorithm.tis_floor=0.2"], "icepop's floor is 1/tis_cap"),
        (["algorithm.tis_floor=3", "algorithm.tis_cap=2"], "must be below algorithm.tis_cap"),
        (["algorithm.tis_floor=0.5", "algorithm.tis_cap=null"], "the correction is off"),
        (["algorithm.off_policy_mask_threshold=-1"], "off_policy_mask_threshold"),
        # a mode with the correction off would silently correct nothing
        (["algorithm.is_correction=sequence_mask", "algorithm.tis_cap=null"], "sequence_mask needs a bound"),
        (["algorithm.is_correction=icepop", "algorithm.tis_cap=null"], "icepop needs a bound"),
        # TRL's on/off switch of the correction names the setting that is mmrl's switch
        (["vllm_importance_sampling_correction=false"], "use algorithm.tis_cap \\(null: no correction"),
    ]:
        with pytest.raises(UserError, match=message):
            load_config(None, overrides)


def test_rows_without_a_token_measure_no_mismatch():
    """A group whose completions hold no token (an empty completion) is no evidence either way: chi-square 0, not -1,
    and the step's rollout figures are those of the other groups, not pulled towards it."""
    from mmrl.rl.step_metrics import ForwardResult, StepTally

    _, empty = mismatch_weights("token_truncate", OLD, SAMPLER, torch.zeros_like(MASK), MismatchBounds(3.0))
    assert (empty["chi2_token"], empty["chi2_seq"]) == (0.0, 0.0)
    _, measured = weights("token_truncate")

    def forward(metrics, tokens):
        zero = torch.tensor(0.0)
        return ForwardResult(loss=zero, tokens=torch.tensor(float(tokens)), metrics={}, mismatch=metrics,
                             mismatch_tokens=torch.tensor(float(tokens)), size=tokens)

    tally = StepTally()
    tally.add_groups([[forward(measured, 5)], [forward(empty, 0)]])
    tally.add_step(0.0, 0.0, True)
    figures = tally.summary(1, {})
    assert figures["rollout/chi2_token"] == pytest.approx(measured["chi2_token"])
    assert figures["rollout/is_ess"] == pytest.approx(measured["is_ess"])
