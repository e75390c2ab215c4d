"""Online-RL math (KL estimators, advantages, PPO losses) against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.losses.advantages import (
    expand_to_tokens,
    gae,
    grpo_advantages,
    last_token_index,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_token_rewards,
    reinforce_advantages,
    remax_advantages,
    rloo_advantages,
    tied_groups,
)
from rlhf.losses.kl import KL_ESTIMATORS, kl_estimator, per_token_kl
from rlhf.losses.policy import (
    AGGREGATIONS,
    aggregate,
    entropy_from_logits,
    entropy_loss,
    kl_penalty_loss,
    loss_units,
    ppo_policy_loss,
    value_loss,
)

INF = float("inf")


def close(actual: torch.Tensor, expected: list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=1e-6
    )


# --------------------------------------------------------------------------------------------
# KL estimators against the exact KL of small categorical distributions

PI = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
PI_REF = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)


def exact_kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p * (p / q).log()).sum())


def expectation(estimator: str, p: torch.Tensor, q: torch.Tensor) -> float:
    """E_{x~p}[k(x)] by enumerating the outcomes: each outcome is one 'token'."""
    k = per_token_kl(p.log()[None], q.log()[None], estimator=estimator)  # [1, 4]
    return float((p * k[0].double()).sum())


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_k1_and_k3_are_unbiased(estimator: str) -> None:
    kl = exact_kl(PI, PI_REF)  # 0.1 ln 0.4 + 0.2 ln 0.8 + 0.3 ln 1.2 + 0.4 ln 1.6 ≈ 0.1064
    assert kl == pytest.approx(
        0.1 * math.log(0.4) + 0.2 * math.log(0.8) + 0.3 * math.log(1.2) + 0.4 * math.log(1.6)
    )
    assert expectation(estimator, PI, PI_REF) == pytest.approx(kl, rel=1e-5)


def test_k2_is_close_for_near_distributions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, dtype=torch.float64)
    p = logits.softmax(-1)
    q = (logits + 0.05 * torch.randn(6, dtype=torch.float64)).softmax(-1)
    kl = exact_kl(p, q)
    assert kl > 0
    assert expectation("k2", p, q) == pytest.approx(kl, rel=0.05)
    # and far apart it is biased: at PI vs PI_REF, ½ Σ π (log π/π_ref)² ≠ KL
    assert abs(expectation("k2", PI, PI_REF) - exact_kl(PI, PI_REF)) > 1e-3


def test_k3_and_k2_are_nonnegative_pointwise_and_k1_is_not() -> None:
    torch.manual_seed(1)
    logps, ref_logps = -5 * torch.rand(1000), -5 * torch.rand(1000)
    assert (per_token_kl(logps, ref_logps, estimator="k3") >= 0).all()
    assert (per_token_kl(logps, ref_logps, estimator="k2") >= 0).all()
    assert (per_token_kl(logps, ref_logps, estimator="k1") < 0).any()
    zero = per_token_kl(logps, logps, estimator="k3")
    assert (zero == 0).all()


def test_k1_k2_k3_by_hand() -> None:
    # log π = −1, log π_ref = −2: log r = −1, r = e^{−1}
    logps, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert float(per_token_kl(logps, ref, estimator="k1")) == pytest.approx(1.0)
    assert float(per_token_kl(logps, ref, estimator="k2")) == pytest.approx(0.5)
    assert float(per_token_kl(logps, ref, estimator="k3")) == pytest.approx(math.exp(-1) - 1 + 1)
    assert kl_estimator("k3") is KL_ESTIMATORS["k3"]


def test_loss_gradients_of_k2_and_k3() -> None:
    """On-policy, E_π[∇k2] = ∇KL(π‖π_ref) and E_π[∇k3] = ∇KL(π_ref‖π) (the reverse KL)."""
    torch.manual_seed(2)
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(5, dtype=torch.float64).log_softmax(-1)

    def grad_of(fn) -> torch.Tensor:
        (g,) = torch.autograd.grad(fn(), theta)
        return g

    def estimator_expectation(name: str):
        def fn() -> torch.Tensor:
            logps = theta.log_softmax(-1)
            k = per_token_kl(logps[None], ref[None], estimator=name)[0].double()
            return (logps.exp().detach() * k).sum()  # samples from π: weights carry no gradient

        return fn

    def forward_kl() -> torch.Tensor:
        logps = theta.log_softmax(-1)
        return (logps.exp() * (logps - ref)).sum()

    def reverse_kl() -> torch.Tensor:
        return (ref.exp() * (ref - theta.log_softmax(-1))).sum()

    kw = dict(atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(grad_of(estimator_expectation("k2")), grad_of(forward_kl), **kw)
    torch.testing.assert_close(grad_of(estimator_expectation("k3")), grad_of(reverse_kl), **kw)
    zero = grad_of(estimator_expectation("k1"))
    torch.testing.assert_close(zero, torch.zeros_like(zero), atol=1e-6, rtol=0)


def test_kl_clamping_and_masking() -> None:
    logps = torch.tensor([[-100.0, -1.0, -INF]], requires_grad=True)
    ref = torch.tensor([[0.0, -1.0, -3.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.isinf(per_token_kl(logps, ref, mask, estimator="k3")[0, 0])
    clamped = per_token_kl(logps, ref, mask, estimator="k3", clamp=20.0)
    assert clamped[0, 0].item() == pytest.approx(math.exp(20) - 1 - 20, rel=1e-5)
    capped = per_token_kl(logps, ref, mask, estimator="k3", clamp=20.0, max_kl=10.0)
    close(capped, [[10.0, 0.0, 0.0]])
    capped.sum().backward()
    assert torch.isfinite(logps.grad).all()  # the −inf pad leaks no NaN
    assert float(logps.grad[0, 2]) == 0.0


# --------------------------------------------------------------------------------------------
# masked statistics


def test_whitening_ignores_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, float("nan")]])
    # real values 1..5: mean 3, unbiased variance (4 + 1 + 0 + 1 + 4) / 4 = 2.5
    assert float(masked_mean(values, mask)) == pytest.approx(3.0)
    assert float(masked_var(values, mask)) == pytest.approx(2.5)
    assert float(masked_var(values, mask, unbiased=False)) == pytest.approx(2.0)
    s = math.sqrt(2.5 + 1e-8)
    expected = [[-2 / s, -1 / s, 0.0, 0.0], [1 / s, 2 / s, 0.0, 0.0]]
    close(masked_whiten(values, mask), expected, atol=1e-6)
    other_padding = values.clone()
    other_padding[0, 3], other_padding[1, 2:] = -1e6, 7.0
    torch.testing.assert_close(masked_whiten(other_padding, mask), masked_whiten(values, mask))
    shifted = masked_whiten(values, mask, shift_mean=False)
    close(shifted, [[3 - 2 / s, 3 - 1 / s, 3.0, 0.0], [3 + 1 / s, 3 + 2 / s, 0.0, 0.0]])


def test_masked_mean_per_row_and_empty() -> None:
    values = torch.tensor([[1.0, 3.0, 9.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    close(masked_mean(values, mask, dim=1), [2.0, 0.0])
    assert float(masked_var(values[1:], mask[1:])) == 0.0


# --------------------------------------------------------------------------------------------
# PPO token rewards and GAE


def test_ppo_token_rewards_by_hand() -> None:
    # β = 0.1, k1 = log π − log π_ref
    logps = torch.tensor([[-1.0, -2.0, -0.5, -INF], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -0.25, 0.0], [-2.0, -1.0, -1.0, -0.5]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    scores = torch.tensor([2.0, -1.0])
    rewards, metrics = ppo_token_rewards(scores, logps, ref, mask, kl_coef=0.1)
    # row 0: k1 = [0.5, 0, −0.25] → [−0.05, 0, 0.025 + 2]; row 1: k1 = [1, 0, 0, −0.5]
    close(rewards, [[-0.05, 0.0, 2.025, 0.0], [-0.1, 0.0, 0.0, 0.05 - 1.0]])
    assert metrics["kl_sum"] == pytest.approx(0.25 + 0.5)
    assert metrics["kl_reward_sum"] == pytest.approx(-0.075)
    assert metrics["score_sum"] == pytest.approx(1.0)
    assert (metrics["sequences"], metrics["tokens"]) == (2.0, 7.0)
    close(last_token_index(mask), [2, 3])


def test_gae_by_hand() -> None:
    gamma, lam = 0.9, 0.8  # γλ = 0.72
    rewards = torch.tensor([[0.0, 0.0, 0.0, 1.0], [-0.1, 0.2, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 0.8], [1.0, 0.5, -0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])  # row 1's last position is padding
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)

    # row 0, δ_t = r_t + γ V_{t+1} − V_t with V_4 = 0:
    d3 = 1.0 + 0.9 * 0.0 - 0.8  # 0.2
    d2 = 0.0 + 0.9 * 0.8 - 0.7  # 0.02
    d1 = 0.0 + 0.9 * 0.7 - 0.6  # 0.03
    d0 = 0.0 + 0.9 * 0.6 - 0.5  # 0.04
    a3 = d3  # 0.2
    a2 = d2 + 0.72 * a3  # 0.164
    a1 = d1 + 0.72 * a2  # 0.14808
    a0 = d0 + 0.72 * a1  # 0.1466176
    # row 1: the padded reward 5 and value 9 are ignored; V after t = 2 is 0
    e2 = 2.0 + 0.9 * 0.0 - (-0.5)  # 2.5
    e1 = 0.2 + 0.9 * (-0.5) - 0.5  # −0.75
    e0 = -0.1 + 0.9 * 0.5 - 1.0  # −0.65
    b2 = e2  # 2.5
    b1 = e1 + 0.72 * b2  # 1.05
    b0 = e0 + 0.72 * b1  # 0.106
    assert (a0, b0) == (pytest.approx(0.1466176), pytest.approx(0.106))
    close(advantages, [[a0, a1, a2, a3], [b0, b1, b2, 0.0]])
    close(returns, [[a0 + 0.5, a1 + 0.6, a2 + 0.7, a3 + 0.8], [b0 + 1.0, b1 + 0.5, b2 - 0.5, 0.0]])


def test_gae_limits() -> None:
    torch.manual_seed(3)
    rewards, values = torch.randn(2, 5), torch.randn(2, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # λ = 1, γ = 1: Monte Carlo return to go minus V
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    kept = rewards * mask
    to_go = kept.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv, (to_go - values) * mask)
    torch.testing.assert_close(ret, to_go * mask)
    # λ = 0: one-step TD error
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=0.0)
    next_values = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(2, 1)], dim=1)
    torch.testing.assert_close(adv, (rewards + 0.5 * next_values - values) * mask)


def test_gae_skips_prompt_positions_and_holes() -> None:
    """Masked positions are skipped: the same tokens give the same advantages wherever they sit."""
    rewards = torch.tensor([[0.3, -0.2, 1.0]])
    values = torch.tensor([[0.1, 0.4, -0.3]])
    compact, _ = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    spread_r = torch.tensor([[7.0, 0.3, 8.0, -0.2, 1.0, 9.0]])
    spread_v = torch.tensor([[7.0, 0.1, 8.0, 0.4, -0.3, 9.0]])
    mask = torch.tensor([[0, 1, 0, 1, 1, 0]])
    spread, _ = gae(spread_r, spread_v, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(spread[mask.bool()], compact[0])
    assert (spread[~mask.bool()] == 0).all()


# --------------------------------------------------------------------------------------------
# sequence-level advantages


def test_rloo_by_hand() -> None:
    rewards = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    # group 1: 1 − (2+6)/2 = −3, 2 − (1+6)/2 = −1.5, 6 − (1+2)/2 = 4.5
    # group 2: 0 − 3/2 = −1.5, −1.5, 3 − 0 = 3
    close(rloo_advantages(rewards, 3), [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])


def test_grpo_by_hand() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 2.0, 3.0])
    advantages, metrics = grpo_advantages(rewards, 4, eps=0.0)
    # group 1: mean 0.5, unbiased std sqrt(4 · 0.25 / 3) = sqrt(1/3): ±0.5 · sqrt(3)
    h = 0.5 * math.sqrt(3)
    # group 3: mean 1.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    s = math.sqrt(5 / 3)
    expected = [h, -h, -h, h, 0.0, 0.0, 0.0, 0.0, -1.5 / s, -0.5 / s, 0.5 / s, 1.5 / s]
    close(advantages, expected, atol=1e-6)
    assert metrics == {"groups": 3.0, "tied_groups": 1.0}
    # Dr. GRPO: centred only
    unscaled, _ = grpo_advantages(rewards, 4, scale=False)
    close(unscaled, [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -1.5, -0.5, 0.5, 1.5])
    # the default eps (1e-4) is added to the std
    default, _ = grpo_advantages(rewards, 4)
    assert float(default[0]) == pytest.approx(0.5 / (math.sqrt(1 / 3) + 1e-4), rel=1e-6)


def test_tied_groups_counted_and_exactly_zero() -> None:
    # 0.1 is not representable: a mean of three 0.1s need not equal 0.1, yet A must be 0
    rewards = torch.tensor([0.1, 0.1, 0.1, 0.0, 0.0, 1.0, 0.7, 0.7, 0.7])
    assert tied_groups(rewards, 3).tolist() == [True, False, True]
    for scale in (True, False):
        advantages, metrics = grpo_advantages(rewards, 3, scale=scale)
        assert metrics["tied_groups"] == 2.0
        assert (advantages[:3] == 0).all() and (advantages[6:] == 0).all()


def test_reinforce_moving_average_baseline() -> None:
    advantages, baseline = reinforce_advantages(torch.tensor([1.0, 3.0]), None)
    close(advantages, [-1.0, 1.0])
    assert float(baseline) == 2.0
    advantages, baseline = reinforce_advantages(torch.tensor([4.0, 6.0]), 2.0, momentum=0.9)
    close(advantages, [2.0, 4.0])  # the old baseline, not this batch's mean
    assert float(baseline) == pytest.approx(0.9 * 2 + 0.1 * 5)


def test_remax_and_expand_to_tokens() -> None:
    advantages = remax_advantages(torch.tensor([1.0, 0.5]), torch.tensor([0.7, 0.7]))
    close(advantages, [0.3, -0.2])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    close(expand_to_tokens(advantages, mask), [[0.3, 0.3, 0.0], [-0.2, 0.0, 0.0]])


# --------------------------------------------------------------------------------------------
# PPO losses


def ppo_inputs() -> dict[str, torch.Tensor]:
    """Five real tokens, ε = 0.2; per token (ratio, A) and L = −min(ρA, clip(ρ)A):

    row 0: (1.5, +1) → −min(1.5, 1.2) = −1.2 clipped;  (0.5, +1) → −min(0.5, 0.8) = −0.5
    row 1: (0.5, −2) → −min(−1, −1.6) = 1.6 clipped;   (1.1, −2) → 2.2;  (1, 0.5) → −0.5
    """
    ratios = torch.tensor([[1.5, 0.5, 1.0], [0.5, 1.1, 1.0]])
    old = torch.tensor([[-1.0, -2.0, -INF], [-0.5, -3.0, -1.0]])
    return dict(
        logps=(old.nan_to_num(neginf=0.0) + ratios.log()).requires_grad_(),
        old_logps=old,
        advantages=torch.tensor([[1.0, 1.0, 0.0], [-2.0, -2.0, 0.5]]),
        mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
    )


def test_ppo_policy_loss_by_hand() -> None:
    inputs = ppo_inputs()
    loss, metrics = ppo_policy_loss(**inputs, clip_eps=0.2, aggregation="token")
    assert loss.item() == pytest.approx(-1.2 - 0.5 + 1.6 + 2.2 - 0.5)  # 1.6
    assert metrics["clipped_tokens"] == 2.0
    assert metrics["tokens"] == 5.0 and metrics["sequences"] == 2.0
    assert metrics["ratio_sum"] == pytest.approx(1.5 + 0.5 + 0.5 + 1.1 + 1.0)
    approx_kl = sum(r - 1 - math.log(r) for r in (1.5, 0.5, 0.5, 1.1, 1.0))
    assert metrics["approx_kl_sum"] == pytest.approx(approx_kl, rel=1e-5)
    loss.backward()
    # dL/dlogp = −A·ρ where the unclipped term is taken, 0 where the clipped one is
    close(inputs["logps"].grad, [[0.0, -0.5, 0.0], [0.0, 2.2, -0.5]], atol=1e-6)

    sequence, _ = ppo_policy_loss(**ppo_inputs(), aggregation="sequence")
    assert sequence.item() == pytest.approx((-1.2 - 0.5) / 2 + (1.6 + 2.2 - 0.5) / 3)
    constant, _ = ppo_policy_loss(**ppo_inputs(), aggregation="constant", max_length=4)
    assert constant.item() == pytest.approx(1.6 / 4)


def test_ppo_clip_higher_and_sequence_advantages() -> None:
    inputs = ppo_inputs()
    # ε_high = 0.6: the ratio 1.5 with A = +1 is no longer clipped → −1.5
    loss, metrics = ppo_policy_loss(**inputs, clip_eps=0.2, clip_eps_high=0.6)
    assert loss.item() == pytest.approx(1.6 - 0.3)
    assert metrics["clipped_tokens"] == 1.0
    # [B] advantages broadcast over each row's tokens
    inputs = ppo_inputs()
    per_row, _ = ppo_policy_loss(**(inputs | {"advantages": torch.tensor([1.0, -2.0])}))
    per_token, _ = ppo_policy_loss(
        **(inputs | {"advantages": torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])})
    )
    assert per_row.item() == pytest.approx(per_token.item())


def test_value_loss_by_hand() -> None:
    """ε = 0.2; per token (V, V_old, R) → V_clip, ½ max((V − R)², (V_clip − R)²):

    (1.0, 0.5, 1.2)  → 0.7:  ½ max(0.04, 0.25) = 0.125 clipped
    (0.4, 0.5, 0.0)  → 0.4:  ½ 0.16 = 0.08
    (2.0, 1.0, 3.0)  → 1.2:  ½ max(1, 3.24) = 1.62 clipped
    (−1.0, 0.0, −2.0) → −0.2: ½ max(1, 3.24) = 1.62 clipped
    (2.0, 1.0, 1.0)  → 1.2:  ½ max(1, 0.04) = 0.5   (moving away: the unclipped error is larger)
    """
    values = torch.tensor([[1.0, 0.4, 2.0], [-1.0, 2.0, 123.0]], requires_grad=True)
    old_values = torch.tensor([[0.5, 0.5, 1.0], [0.0, 1.0, float("nan")]])
    returns = torch.tensor([[1.2, 0.0, 3.0], [-2.0, 1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, metrics = value_loss(values, old_values, returns, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.125 + 0.08 + 1.62 + 1.62 + 0.5)
    assert metrics["value_clipped_tokens"] == 3.0
    assert metrics["value_sum"] == pytest.approx(4.4)
    loss.backward()
    # gradient (V − R) where the unclipped error is taken, 0 where the clipped one is
    close(values.grad, [[0.0, 0.4, 0.0], [0.0, 1.0, 0.0]])
    unclipped, _ = value_loss(values, old_values, returns, mask, clip_eps=None)
    assert unclipped.item() == pytest.approx(0.5 * (0.04 + 0.16 + 1 + 1 + 1))
    per_sequence, _ = value_loss(values, old_values, returns, mask, aggregation="sequence")
    assert per_sequence.item() == pytest.approx((0.125 + 0.08 + 1.62) / 3 + (1.62 + 0.5) / 2)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_aggregation_is_invariant_to_the_micro_batch_split(aggregation: str) -> None:
    """One step of 6 sequences: whole, or 3 micro-batches of 2, gives the same gradient."""
    torch.manual_seed(4)
    lengths = torch.tensor([5, 1, 3, 6, 2, 4])
    mask = (torch.arange(6)[None] < lengths[:, None]).long()  # [6, 6]
    old = -torch.rand(6, 6) * 3
    logps = (old + 0.3 * torch.randn(6, 6)).requires_grad_()
    advantages = torch.randn(6, 6)
    kw = dict(aggregation=aggregation, max_length=8)

    def step(splits: list[slice]) -> torch.Tensor:
        logps.grad = None
        units = sum(loss_units(mask[s], aggregation) for s in splits)
        for s in splits:
            loss, _ = ppo_policy_loss(logps[s], old[s], advantages[s], mask[s], **kw)
            (loss / units).backward()
        return logps.grad.clone()

    whole = step([slice(0, 6)])
    split = step([slice(0, 2), slice(2, 4), slice(4, 6)])
    torch.testing.assert_close(whole, split)
    assert loss_units(mask, aggregation) == (int(lengths.sum()) if aggregation == "token" else 6)


def test_aggregate_ignores_padding_values() -> None:
    per_token = torch.tensor([[1.0, 2.0, float("nan")], [3.0, INF, -INF]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert float(aggregate(per_token, mask, "token")) == 6.0
    assert float(aggregate(per_token, mask, "sequence")) == 1.5 + 3.0
    assert float(aggregate(per_token, mask, "constant", max_length=3)) == 2.0


def test_entropy_from_logits_and_loss() -> None:
    torch.manual_seed(5)
    logits = torch.randn(2, 3, 7, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = torch.distributions.Categorical(logits=logits).entropy()  # [2, 3]
    torch.testing.assert_close(entropy_from_logits(logits), expected)
    loss, metrics = entropy_loss(mask, logits=logits)
    real_sum = expected[mask.bool()].sum().item()
    assert loss.item() == pytest.approx(-real_sum, rel=1e-6)
    assert metrics["entropy_sum"] == pytest.approx(real_sum, rel=1e-6)
    loss.backward()
    assert (logits.grad[~mask.bool()] == 0).all()
    precomputed, _ = entropy_loss(mask, entropies=expected.detach(), aggregation="sequence")
    by_hand = (expected[0, :2].mean() + expected[1, 0]).item()
    assert float(precomputed) == pytest.approx(-by_hand, rel=1e-6)
    # uniform over V: H = log V
    uniform = entropy_from_logits(torch.zeros(1, 1, 7))
    assert float(uniform) == pytest.approx(math.log(7))


def test_kl_penalty_loss() -> None:
    logps = torch.tensor([[-1.0, -2.0, -INF]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.0, -1.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = kl_penalty_loss(logps, ref, mask, estimator="k3")
    # log r = −1, 0: k3 = e^{−1} − 1 + 1, 0
    assert loss.item() == pytest.approx(math.exp(-1))
    assert metrics["kl_sum"] == pytest.approx(math.exp(-1))
    loss.backward()
    # ∂k3/∂log π = 1 − r
    close(logps.grad, [[1 - math.exp(-1), 0.0, 0.0]])
    k2, _ = kl_penalty_loss(logps, ref, mask, estimator="k2", aggregation="sequence")
    assert k2.item() == pytest.approx(0.5 / 2)
    with pytest.raises(ValueError, match="k1"):
        kl_penalty_loss(logps, ref, mask, estimator="k1")


# --------------------------------------------------------------------------------------------
# errors name the argument


def test_shape_errors_name_the_argument() -> None:
    inputs = ppo_inputs()
    with pytest.raises(ValueError, match="old_logps"):
        ppo_policy_loss(**(inputs | {"old_logps": torch.zeros(2, 4)}))
    with pytest.raises(ValueError, match="advantages"):
        ppo_policy_loss(**(inputs | {"advantages": torch.zeros(3)}))
    with pytest.raises(ValueError, match="logps"):
        ppo_policy_loss(**(inputs | {"logps": torch.zeros(6)}))
    with pytest.raises(ValueError, match="aggregation"):
        ppo_policy_loss(**inputs, aggregation="mean")
    with pytest.raises(ValueError, match="max_length"):
        ppo_policy_loss(**inputs, aggregation="constant")
    with pytest.raises(ValueError, match="returns"):
        value_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2), torch.ones(2, 3))
    with pytest.raises(ValueError, match="values"):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask"):
        gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 3))
    with pytest.raises(ValueError, match="lam"):
        gae(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), lam=1.5)
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="group_size"):
        rloo_advantages(torch.zeros(6), 1)
    with pytest.raises(ValueError, match="rewards"):
        rloo_advantages(torch.zeros(2, 3), 3)
    with pytest.raises(ValueError, match="greedy_rewards"):
        remax_advantages(torch.zeros(4), torch.zeros(2))
    with pytest.raises(ValueError, match="scores"):
        ppo_token_rewards(
            torch.zeros(3), torch.zeros(2, 4), torch.zeros(2, 4), torch.ones(2, 4), kl_coef=0.1
        )
    with pytest.raises(ValueError, match="mask has rows with no real token"):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))
    with pytest.raises(ValueError, match="mask"):
        masked_whiten(torch.zeros(2, 3), torch.ones(2, 2))
    with pytest.raises(ValueError, match="estimator"):
        per_token_kl(torch.zeros(2), torch.zeros(2), estimator="k4")
    with pytest.raises(ValueError, match="ref_logps"):
        per_token_kl(torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="logits"):
        entropy_loss(torch.ones(2, 3), logits=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="exactly one"):
        entropy_loss(torch.ones(2, 3))
    with pytest.raises(ValueError, match="baseline"):
        reinforce_advantages(torch.zeros(2), torch.zeros(2))
