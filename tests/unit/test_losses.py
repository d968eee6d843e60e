"""Policy loss, KL estimators and every aggregation against hand-computed values on a fixed tiny batch."""

import math

import pytest
import torch

from mmrl.errors import UserError
from mmrl.rl.kl import kl_estimate
from mmrl.rl.losses import AGGREGATIONS, aggregate, loss_mask, policy_loss

# Two completions, T = 3. log ratios: row 0 [.5, -.5, 0], row 1 [1.5, -.5, 0]; row 1's last token is padding.
LOGP = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -9.0]])
OLD = LOGP - torch.tensor([[0.5, -0.5, 0.0], [1.5, -0.5, 0.0]])
ADV = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
R = [[math.exp(0.5), math.exp(-0.5), 1.0], [math.exp(1.5), math.exp(-0.5), 1.0]]  # 1.648721, .606531, 4.481689
KW = dict(eps_low=0.2, eps_high=0.28)


def close(actual, expected, tol=1e-5):
    assert torch.allclose(actual, torch.tensor(expected, dtype=actual.dtype), atol=tol), (actual, expected)


def test_clip_higher_per_token():
    loss, m = policy_loss(LOGP, OLD, ADV, MASK, **KW)
    # row 0, A=+1: -min(r, clip(r, .8, 1.28)): r=1.6487 -> -1.28; r=.6065 -> -.606531 (min keeps r); r=1 -> -1
    # row 1, A=-2: max(2r, 2 clip(r)): r=4.4817 -> 8.963378; r=.6065 -> clip .8 -> 1.6; padding -> 0
    close(loss, [[-1.28, -R[0][1], -1.0], [2 * R[1][0], 1.6, 0.0]])
    assert m["clip_frac_high"] == pytest.approx(1 / 5)  # (0,0): r > 1.28 with A > 0
    assert m["clip_frac_low"] == pytest.approx(1 / 5)  # (1,1): r < .8 with A < 0
    assert m["ratio_mean"] == pytest.approx((R[0][0] + R[0][1] + 1 + R[1][0] + R[1][1]) / 5, rel=1e-6)
    assert m["dual_clip_frac"] == 0.0


def test_dual_clip_bounds_negative_advantages():
    loss, m = policy_loss(LOGP, OLD, ADV, MASK, dual_clip_c=3.0, **KW)
    # (1,0): min(8.963378, -3 * -2 = 6) = 6; others unchanged (positive A never dual-clipped)
    close(loss, [[-1.28, -R[0][1], -1.0], [6.0, 1.6, 0.0]])
    assert m["dual_clip_frac"] == pytest.approx(1 / 5)


def test_ratio_clamp():
    loss, _ = policy_loss(LOGP, OLD, ADV, MASK, ratio_clamp=1.0, **KW)
    assert loss[1, 0].item() == pytest.approx(2 * math.e, rel=1e-6)  # log ratio 1.5 clamped to 1 -> 2e


def test_on_policy_ratio_one_gradient_minus_advantage():
    logp = LOGP.clone().requires_grad_(True)
    loss, m = policy_loss(logp, None, ADV, MASK, **KW)
    close(loss, [[-1.0, -1.0, -1.0], [2.0, 2.0, 0.0]])
    assert m["ratio_mean"] == pytest.approx(1.0)
    loss.sum().backward()
    close(logp.grad, [[-1.0, -1.0, -1.0], [2.0, 2.0, 0.0]])  # d(-A * r)/d logp = -A at r = 1


def test_padding_nan_does_not_leak():
    logp = LOGP.clone()
    logp[1, 2] = float("-inf")
    loss, _ = policy_loss(logp, None, ADV, MASK, **KW)
    assert torch.isfinite(loss).all() and loss[1, 2] == 0


def test_kl_estimators_by_hand():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-0.9, -2.2]])  # d = ref - logp = [.1, -.2]
    close(kl_estimate(logp, ref, "k1"), [[-0.1, 0.2]])
    close(kl_estimate(logp, ref, "k2"), [[0.005, 0.02]])
    close(kl_estimate(logp, ref, "k3"), [[math.exp(0.1) - 1.1, math.exp(-0.2) - 0.8]])  # .0051709, .0187308
    close(kl_estimate(logp, ref, "k1", clamp=0.15), [[-0.1, 0.15]])
    huge = kl_estimate(torch.tensor([[-100.0]], requires_grad=True), torch.tensor([[0.0]]), "k3", clamp=10.0)
    assert huge.item() == 10.0
    with pytest.raises(UserError, match="kl_estimator"):
        kl_estimate(logp, ref, "k4")


def test_kl_term_added_with_beta():
    ref = LOGP + torch.tensor([[0.1, -0.2, 0.0], [0.0, 0.0, 0.0]])
    base, _ = policy_loss(LOGP, OLD, ADV, MASK, **KW)
    loss, m = policy_loss(LOGP, OLD, ADV, MASK, ref_logp=ref, beta=0.1, kl_estimator="k3", **KW)
    k3 = [math.exp(0.1) - 1.1, math.exp(-0.2) - 0.8]
    close(loss - base, [[0.1 * k3[0], 0.1 * k3[1], 0.0], [0.0, 0.0, 0.0]])
    assert m["kl_mean"] == pytest.approx(sum(k3) / 5, rel=1e-5)


# Per-token loss of the dual-clip case: row sums -2.886531 (3 tokens) and 7.6 (2 tokens); 5 active tokens.
L = torch.tensor([[-1.28, -0.606531, -1.0], [6.0, 1.6, 0.0]])


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("grpo", {}, (-2.886531 / 3 + 7.6 / 2) / 2),  # 1.4189115
        ("grpo", {"global_num_sequences": 4}, (-2.886531 / 3 + 7.6 / 2) / 4),
        ("bnpo", {}, 4.713469 / 5),  # 0.9426938
        ("bnpo", {"global_active_tokens": 99.0}, 4.713469 / 5),  # local by definition
        ("dr_grpo", {}, 4.713469 / (2 * 4)),  # B = 2, max_completion_length = 4
        ("dr_grpo", {"global_num_sequences": 8}, 4.713469 / (8 * 4)),
        ("dapo", {}, 4.713469 / 5),
        ("dapo", {"global_active_tokens": 10.0}, 4.713469 / 10),
    ],
)
def test_aggregations_by_hand(name, kwargs, expected):
    assert aggregate(name, L, MASK, max_completion_length=4, **kwargs).item() == pytest.approx(expected, rel=1e-6)


def test_aggregation_names():
    assert AGGREGATIONS.names() == ["bnpo", "dapo", "dr_grpo", "grpo"]
    with pytest.raises(UserError, match="algorithm.loss_aggregation"):
        AGGREGATIONS.get("seq_mean")


def _batch(seed=0, b=4, t=5):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    adv = torch.randn(b, generator=g)
    return logp, adv, mask


@pytest.mark.parametrize("name", ["dapo", "grpo", "dr_grpo"])
def test_micro_batches_sum_to_whole_batch(name):
    """Gradient accumulation over 2 micro-batches with global normalisers == one pass over the whole batch."""
    logp, adv, mask = _batch()
    norms = dict(max_completion_length=5, global_active_tokens=float(mask.sum()), global_num_sequences=4)

    whole_logp = logp.clone().requires_grad_(True)
    whole = aggregate(name, policy_loss(whole_logp, None, adv, mask)[0], mask, **norms)
    whole.backward()

    acc_logp = logp.clone().requires_grad_(True)
    total = 0.0
    for rows in (slice(0, 2), slice(2, 4)):
        part = aggregate(name, policy_loss(acc_logp[rows], None, adv[rows], mask[rows])[0], mask[rows], **norms)
        part.backward()
        total += part.item()
    assert total == pytest.approx(whole.item(), abs=1e-6)
    assert torch.allclose(acc_logp.grad, whole_logp.grad, atol=1e-7)
    # Without the global normaliser dapo would be wrong (each micro-batch divided by its own token count).
    if name == "dapo":
        local = sum(aggregate(name, policy_loss(logp[r], None, adv[r], mask[r])[0], mask[r], max_completion_length=5)
                    for r in (slice(0, 2), slice(2, 4)))
        assert abs(float(local) - whole.item()) > 1e-3


def test_ddp_world_size_compensation():
    """Two ranks, one micro-batch each: DDP averages grads; multiplying each loss by world_size restores the sum."""
    logp, adv, mask = _batch(seed=1)
    norms = dict(max_completion_length=5, global_active_tokens=float(mask.sum()), global_num_sequences=4)
    ref = logp.clone().requires_grad_(True)
    aggregate("dapo", policy_loss(ref, None, adv, mask)[0], mask, **norms).backward()
    world_size, grads = 2, []
    for rows in (slice(0, 2), slice(2, 4)):
        x = logp.clone().requires_grad_(True)
        (world_size * aggregate("dapo", policy_loss(x[rows], None, adv[rows], mask[rows])[0], mask[rows], **norms)).backward()
        grads.append(x.grad)
    averaged = (grads[0] + grads[1]) / world_size  # what DDP's all-reduce computes
    assert torch.allclose(averaged, ref.grad, atol=1e-7)


def test_loss_mask_truncated():
    mask = torch.ones(3, 2, dtype=torch.long)
    out = loss_mask(mask, torch.tensor([False, True, False]), True)
    assert out.tolist() == [[1, 1], [0, 0], [1, 1]]
    assert loss_mask(mask, torch.tensor([False, True, False]), False) is mask


# -- GSPO (sequence-level ratio), hand-computed --------------------------------------------------------------------


def test_gspo_sequence_ratio_by_hand():
    from mmrl.rl.losses import POLICY_LOSSES

    logp = LOGP.clone().requires_grad_(True)
    loss, m = POLICY_LOSSES.get("gspo")(logp, OLD, ADV, MASK, **KW)
    # Row 0: mean log-ratio over 3 tokens (.5 - .5 + 0) / 3 = 0 -> s = 1, A = +1: -1 on each active token.
    # Row 1: mean over its 2 active tokens (1.5 - .5) / 2 = .5 -> s = e^.5 = 1.648721, A = -2:
    #   max(2 s, 2 clip(s)) = 2 s = 3.297443 on each active token (the padded token is 0).
    s1 = math.exp(0.5)
    close(loss, [[-1.0, -1.0, -1.0], [2 * s1, 2 * s1, 0.0]])
    assert m["ratio_mean"] == pytest.approx((3 * 1.0 + 2 * s1) / 5, rel=1e-6)
    assert m["clip_frac_high"] == 0.0 and m["clip_frac_low"] == 0.0
    # grpo aggregation = the paper's mean over sequences; the gradient flows through s_i = exp(mean log-ratio):
    # d/d logp_t of (1/B) * (-A_i s_i) = -A_i s_i / (B |y_i|): row 0: -1/6; row 1: 2 s1 / 4.
    aggregate("grpo", loss, MASK, max_completion_length=3).backward()
    close(logp.grad, [[-1 / 6, -1 / 6, -1 / 6], [s1 / 2, s1 / 2, 0.0]])


def test_gspo_clips_whole_sequences():
    from mmrl.rl.losses import POLICY_LOSSES

    old = LOGP - torch.tensor([[0.1, 0.1, 0.1], [0.0, 0.0, 0.0]])  # row 0: s = e^.1 = 1.105171 > 1 + 4e-4
    logp = LOGP.clone().requires_grad_(True)
    loss, m = POLICY_LOSSES.get("gspo")(logp, old, ADV, MASK, eps_low=3e-4, eps_high=4e-4)
    close(loss, [[-1.0004, -1.0004, -1.0004], [2.0, 2.0, 0.0]])  # row 0 clipped at 1 + eps_high; row 1 s = 1
    assert m["clip_frac_high"] == pytest.approx(3 / 5)  # all 3 tokens of the clipped sequence
    loss.sum().backward()
    close(logp.grad[0], [0.0, 0.0, 0.0])  # a clipped sequence gives no gradient
    with pytest.raises(ValueError, match="one per completion"):
        POLICY_LOSSES.get("gspo")(LOGP, OLD, ADV.unsqueeze(1).expand(2, 3), MASK)


def test_policy_loss_names():
    from mmrl.rl.losses import POLICY_LOSSES

    assert POLICY_LOSSES.names() == ["cispo", "gmpo", "gspo", "ppo", "sapo"]
    with pytest.raises(UserError, match="algorithm.policy_loss"):
        POLICY_LOSSES.get("grpo_token")


# -- what each KL estimator's gradient is (exact expectation over a small vocabulary) -----------------------------


def _expected_gradient(estimator: str, logits: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """E_{y ~ pi}[grad k(y)] computed exactly: the sum over the vocabulary weighted by pi(y) (no sampling noise)."""
    theta = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, -1)
    kl = kl_estimate(logp.unsqueeze(0), ref_logp.unsqueeze(0), estimator).squeeze(0)
    (logp.exp().detach() * kl).sum().backward()
    return theta.grad


def _grad(fn, logits: torch.Tensor) -> torch.Tensor:
    theta = logits.clone().requires_grad_(True)
    fn(torch.log_softmax(theta, -1)).backward()
    return theta.grad


def test_kl_estimator_gradients_are_the_documented_kls():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, generator=g, dtype=torch.float64)
    ref = torch.log_softmax(torch.randn(7, generator=g, dtype=torch.float64), -1)
    forward_kl = _grad(lambda lp: (lp.exp() * (lp - ref)).sum(), logits)  # grad KL(pi || ref)
    reverse_kl = _grad(lambda lp: (ref.exp() * (ref - lp)).sum(), logits)  # grad KL(ref || pi)
    assert torch.allclose(_expected_gradient("k1", logits, ref), torch.zeros(7, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(_expected_gradient("k2", logits, ref), forward_kl, atol=1e-12)
    assert torch.allclose(_expected_gradient("k3", logits, ref), reverse_kl, atol=1e-12)
    assert torch.allclose(_expected_gradient("low_var_kl", logits, ref), reverse_kl, atol=1e-12)
    assert not torch.allclose(forward_kl, reverse_kl, atol=1e-3)  # the two really differ here


def test_low_var_kl_is_k3_bounded_by_ten():
    logp = torch.tensor([[-1.0, -30.0]])
    ref = torch.tensor([[-0.9, -1.0]])  # d = [.1, 29]: k3 = e^20 - 21 after the +-20 clamp
    close(kl_estimate(logp, ref, "low_var_kl"), [[math.exp(0.1) - 1.1, 10.0]])
    assert kl_estimate(logp, ref, "k3")[0, 1] > 1e8


def test_k1_as_a_loss_term_is_a_config_error():
    from mmrl.config import load_config

    with pytest.raises(UserError, match="k1 as a loss term has zero expected gradient.*kl_penalty=reward"):
        load_config(None, ["algorithm.beta=0.1", "algorithm.kl_estimator=k1"])
    cfg = load_config(None, ["algorithm.beta=0.1", "algorithm.kl_penalty=reward"])
    assert cfg.algorithm.resolved_kl_estimator == "k1"
    assert load_config(None, ["algorithm.beta=0.1"]).algorithm.resolved_kl_estimator == "k3"
