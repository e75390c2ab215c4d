"""DAPO, GSPO and REINFORCE++ math against numbers worked out by hand (tier a).

DAPO: Yu et al. 2025, clip-higher (eq. 10), token-level loss (eq. 12), soft overlong punishment
(eq. 13), dynamic sampling (eq. 11). GSPO: Zheng et al. 2025, eq. 5 and 7. REINFORCE++: Hu
2025, eq. 8-10, with k2 in the loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.losses.advantages import (
    dynamic_sampling_refill,
    grpo_advantages,
    informative_groups,
    reinforce_pp_advantages,
    tied_groups,
)
from rlhf.losses.policy import (
    AGGREGATIONS,
    gspo_policy_loss,
    kl_penalty_loss,
    loss_units,
    ppo_policy_loss,
)
from rlhf.losses.shaping import overlong_penalty

INF = float("inf")


def close(actual: torch.Tensor, expected: list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=1e-6
    )


# --------------------------------------------------------------------------------------------
# DAPO: clip-higher (eq. 10) and token-level aggregation (eq. 12)

# one response of 6 tokens, each a case of ε_low = 0.2, ε_high = 0.28:
#   ratio  A    clip range [0.8, 1.28]                       L = −min(ρA, clip(ρ)A)   ∂L/∂logπ
#   1.25  +1   inside: not clipped (ε = 0.2 would clip)     −1.25                    −1.25
#   1.30  +1   above 1.28: clipped                          −1.28                     0
#   0.75  −1   below 0.8: clipped (ε_high plays no part)    +0.80                     0
#   0.85  −1   inside                                       +0.85                    +0.85
#   1.30  −1   above, but min takes the unclipped ρA        +1.30                    +1.30
#   0.75  +1   below, but min takes the unclipped ρA        −0.75                    −0.75
DAPO_RATIOS = [1.25, 1.3, 0.75, 0.85, 1.3, 0.75]
DAPO_ADVANTAGES = [1.0, 1.0, -1.0, -1.0, -1.0, 1.0]


def dapo_inputs() -> dict:
    old = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.5, -2.5]])
    return dict(
        logps=(old + torch.tensor([DAPO_RATIOS]).log()).requires_grad_(),
        old_logps=old,
        advantages=torch.tensor([DAPO_ADVANTAGES]),
        mask=torch.ones(1, 6),
    )


def test_clip_higher_is_asymmetric() -> None:
    inputs = dapo_inputs()
    loss, metrics = ppo_policy_loss(**inputs, clip_eps=0.2, clip_eps_high=0.28)
    assert loss.item() == pytest.approx(-1.25 - 1.28 + 0.80 + 0.85 + 1.30 - 0.75, abs=1e-5)
    assert metrics["clipped_tokens"] == 2.0
    loss.backward()
    close(inputs["logps"].grad, [[-1.25, 0.0, 0.0, 0.85, 1.30, -0.75]], atol=1e-5)

    # the symmetric ε = 0.2 clips the first token too (at 1.2) and the second lower (1.2)
    inputs = dapo_inputs()
    loss, metrics = ppo_policy_loss(**inputs, clip_eps=0.2)
    assert loss.item() == pytest.approx(-1.20 - 1.20 + 0.80 + 0.85 + 1.30 - 0.75, abs=1e-5)
    assert metrics["clipped_tokens"] == 3.0
    loss.backward()
    close(inputs["logps"].grad, [[0.0, 0.0, 0.0, 0.85, 1.30, -0.75]], atol=1e-5)


def test_clip_higher_lower_bound_is_epsilon_low() -> None:
    """ε_high does not move the lower bound: ratio 0.75 with A < 0 is clipped at 1 − ε_low."""
    old = torch.zeros(1, 2)
    logps = torch.tensor([[math.log(0.75), math.log(0.75)]], requires_grad=True)
    advantages = torch.tensor([[-1.0, -1.0]])
    loss, metrics = ppo_policy_loss(
        logps, old, advantages, torch.ones(1, 2), clip_eps=0.2, clip_eps_high=10.0
    )
    assert loss.item() == pytest.approx(2 * 0.8)
    assert metrics["clipped_tokens"] == 2.0
    # ε_low = 0.3 lets 0.75 through: L = +0.75 per token
    loss, metrics = ppo_policy_loss(logps, old, advantages, torch.ones(1, 2), clip_eps=0.3)
    assert loss.item() == pytest.approx(2 * 0.75)
    assert metrics["clipped_tokens"] == 0.0


def token_vs_sequence_inputs() -> dict:
    # ratio 1 everywhere, so L_t = −A_t: a 1-token response with A = +1 and a 3-token one
    # with A = −1 (its padding holding −inf, which must not matter)
    logps = torch.tensor([[-1.0, -INF, -INF], [-2.0, -1.0, -0.5]])
    return dict(
        logps=logps.clone().requires_grad_(),
        old_logps=logps.clone(),
        advantages=torch.tensor([1.0, -1.0]),
        mask=torch.tensor([[1, 0, 0], [1, 1, 1]]),
    )


def test_token_level_aggregation_weighs_long_responses_more() -> None:
    """DAPO eq. 12: Σ over all tokens / total tokens, versus GRPO's mean of per-sequence means."""
    inputs = token_vs_sequence_inputs()
    token, _ = ppo_policy_loss(**inputs, aggregation="token")
    units = loss_units(inputs["mask"], "token")
    assert units == 4
    # (−1 + 1 + 1 + 1) / 4: the 3-token response has 3 votes
    assert token.item() / units == pytest.approx(0.5)
    (token / units).backward()
    # every token weighs 1/4: ∂L/∂logπ_t = −A_t / 4
    close(inputs["logps"].grad, [[-0.25, 0.0, 0.0], [0.25, 0.25, 0.25]])

    inputs = token_vs_sequence_inputs()
    sequence, _ = ppo_policy_loss(**inputs, aggregation="sequence")
    units = loss_units(inputs["mask"], "sequence")
    assert units == 2
    # (−1/1 + 3/3) / 2: each response has one vote, whatever its length
    assert sequence.item() / units == pytest.approx(0.0)
    (sequence / units).backward()
    # each token weighs 1 / (2 · n_b)
    close(inputs["logps"].grad, [[-0.5, 0.0, 0.0], [1 / 6, 1 / 6, 1 / 6]])


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_dapo_loss_is_invariant_to_the_micro_batch_split(aggregation: str) -> None:
    """Clip-higher with any aggregation: 6 responses whole, or 3 micro-batches of 2."""
    torch.manual_seed(7)
    lengths = torch.tensor([5, 1, 0, 6, 2, 4])  # row 2 dropped (e.g. a tied group)
    mask = (torch.arange(6)[None] < lengths[:, None]).long()  # [6, 6]
    old = -torch.rand(6, 6) * 3
    logps = (old + 0.3 * torch.randn(6, 6)).requires_grad_()
    advantages = torch.randn(6)

    def step(splits: list[slice]) -> torch.Tensor:
        logps.grad = None
        units = sum(loss_units(mask[s], aggregation) for s in splits)
        for s in splits:
            loss, _ = ppo_policy_loss(
                logps[s],
                old[s],
                advantages[s],
                mask[s],
                clip_eps=0.2,
                clip_eps_high=0.28,
                aggregation=aggregation,
            )
            (loss / units).backward()
        return logps.grad.clone()

    torch.testing.assert_close(step([slice(0, 6)]), step([slice(0, 2), slice(2, 4), slice(4, 6)]))
    assert loss_units(mask, aggregation) == (18 if aggregation == "token" else 5)


# --------------------------------------------------------------------------------------------
# loss_units: tokens, or rows with a token in the loss


def test_loss_units_counts_rows_with_a_real_token() -> None:
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]])
    assert loss_units(mask, "token") == 3
    assert loss_units(mask, "sequence") == 2
    assert loss_units(mask, "constant") == 2
    # the divisor is what the mean over responses needs: the empty rows add 0 to the sum
    logps = torch.zeros(4, 3)
    advantages = torch.tensor([1.0, 5.0, 3.0, 7.0])
    for aggregation in ("sequence", "constant"):
        loss, _ = ppo_policy_loss(
            logps, logps, advantages, mask, aggregation=aggregation, max_length=1
        )
        per_response = -(1.0 + 3.0) if aggregation == "sequence" else -(2 * 1.0 + 3.0)
        assert loss.item() / loss_units(mask, aggregation) == pytest.approx(per_response / 2)
    assert set(AGGREGATIONS) == {"sequence", "token", "constant"}


# --------------------------------------------------------------------------------------------
# DAPO: soft overlong punishment (eq. 13)


def test_overlong_penalty_regions_and_boundaries() -> None:
    # L_max = 20, L_cache = 4: 0 up to 16, then (16 − |y|)/4 down to −1 at 20, then −1
    lengths = torch.tensor([0, 15, 16, 17, 18, 19, 20, 21, 100])
    penalty = overlong_penalty(lengths, max_new_tokens=20, cache_length=4)
    close(penalty, [0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0])
    assert penalty.dtype == torch.float32
    # the paper's setting: L_max = 20480, L_cache = 4096; the ramp starts at 16384
    paper = overlong_penalty(torch.tensor([16384, 16385, 18432, 20480]), 20480, 4096)
    close(paper, [0.0, -1 / 4096, -0.5, -1.0])


@pytest.mark.parametrize("cache_length", [0, -1, 20, 25])
def test_overlong_penalty_validates_cache_length(cache_length: int) -> None:
    with pytest.raises(ValueError, match="cache_length"):
        overlong_penalty(torch.tensor([3]), max_new_tokens=20, cache_length=cache_length)


def test_overlong_penalty_validates_lengths() -> None:
    with pytest.raises(ValueError, match="lengths"):
        overlong_penalty(torch.tensor([[3, 4]]), 20, 4)
    with pytest.raises(ValueError, match="lengths"):
        overlong_penalty(torch.tensor([-1]), 20, 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        overlong_penalty(torch.tensor([1]), 0, 4)


# --------------------------------------------------------------------------------------------
# DAPO: dynamic sampling (eq. 11)


def test_informative_groups_is_the_complement_of_tied_groups() -> None:
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 0.5, 0.5, 0.6])
    assert informative_groups(rewards, 3).tolist() == [False, True, False, True]
    assert torch.equal(informative_groups(rewards, 3), ~tied_groups(rewards, 3))
    with pytest.raises(ValueError, match="group_size"):
        informative_groups(rewards, 5)


def test_dynamic_sampling_refill_by_hand() -> None:
    refill = dynamic_sampling_refill
    # full (or over-full) batch, or out of rounds: stop
    assert refill(8, 8, rounds_done=1, max_rounds=3) == 0
    assert refill(10, 8, rounds_done=1, max_rounds=3, sampled_groups=12) == 0
    assert refill(3, 8, rounds_done=3, max_rounds=3, sampled_groups=24) == 0
    # the bare shortfall when nothing tells the informative rate
    assert refill(3, 8, rounds_done=1, max_rounds=3) == 5
    assert refill(0, 8, rounds_done=0, max_rounds=3) == 8
    assert refill(0, 8, rounds_done=1, max_rounds=3, sampled_groups=8) == 8  # rate 0: unknown
    # shortfall / rate: 3 of 12 informative (1/4), 5 missing → 20 prompts; 16 at most
    assert refill(3, 8, rounds_done=1, max_rounds=3, sampled_groups=12) == 20
    assert refill(3, 8, rounds_done=1, max_rounds=3, sampled_groups=12, max_prompts=16) == 16
    # 5 of 8 informative, 3 missing → ⌈3 · 8 / 5⌉ = ⌈4.8⌉ = 5
    assert refill(5, 8, rounds_done=1, max_rounds=3, sampled_groups=8) == 5
    # every group informative: exactly the shortfall
    assert refill(6, 8, rounds_done=1, max_rounds=3, sampled_groups=6) == 2


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(kept_groups=-1), "kept_groups"),
        (dict(target_groups=0), "target_groups"),
        (dict(max_rounds=0), "max_rounds"),
        (dict(rounds_done=True), "rounds_done"),
        (dict(sampled_groups=2), "sampled_groups"),  # fewer sampled than kept
        (dict(max_prompts=0), "max_prompts"),
    ],
)
def test_dynamic_sampling_refill_validates(kwargs: dict, name: str) -> None:
    args = dict(kept_groups=3, target_groups=8, rounds_done=1, max_rounds=3) | kwargs
    with pytest.raises(ValueError, match=name):
        dynamic_sampling_refill(**args)


def test_dynamic_sampling_loop_fills_the_batch() -> None:
    """The recipe loop of the docstring, with scripted rounds of K = 2 rewards per prompt."""
    target, group_size = 4, 2
    # what each round's sampler returns for n prompts: a stream of groups, tied ones (0, 0)
    stream = iter([(1.0, 0.0), (0.0, 0.0), (1.0, 1.0), (0.0, 1.0)] + [(0.0, 0.0), (1.0, 0.0)] * 9)
    kept: list[tuple[float, float]] = []
    sampled = rounds = 0
    asked = []
    n = target
    while n:
        asked.append(n)
        groups = [next(stream) for _ in range(n)]
        rewards = torch.tensor(groups).flatten()  # [n · K]
        keep = informative_groups(rewards, group_size)  # [n]
        kept += [g for g, k in zip(groups, keep.tolist(), strict=True) if k]
        sampled += n
        rounds += 1
        n = dynamic_sampling_refill(
            len(kept), target, rounds_done=rounds, max_rounds=5, sampled_groups=sampled
        )
    # round 1: 4 prompts, 2 informative; 2 missing at rate 1/2 → 4 more; round 2: (0,0),(1,0)
    # twice → 2 informative, 4 kept: stop
    assert asked == [4, 4] and rounds == 2 and len(kept) == 4
    assert kept == [(1.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 0.0)]


# --------------------------------------------------------------------------------------------
# GSPO (eq. 5 and 7)


def gspo_inputs() -> dict:
    # row 0: |y| = 2, log ratios 0.1, 0.3 → mean 0.2, s = e^0.2 ≈ 1.2214
    # row 1: |y| = 3, log ratios −0.2, 0, −0.1 → mean −0.1, s = e^−0.1 ≈ 0.9048
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -1.5, -2.5]])
    log_ratio = torch.tensor([[0.1, 0.3, 0.0], [-0.2, 0.0, -0.1]])
    logps = old + log_ratio
    logps[0, 2] = -INF  # padding: ignored
    old = old.clone()
    old[0, 2] = float("nan")
    return dict(
        logps=logps.requires_grad_(),
        old_logps=old,
        advantages=torch.tensor([1.0, -1.0]),
        mask=torch.tensor([[1, 1, 0], [1, 1, 1]]),
    )


def test_gspo_by_hand() -> None:
    s0, s1 = math.exp(0.2), math.exp(-0.1)
    inputs = gspo_inputs()
    loss, metrics = gspo_policy_loss(**inputs, clip_eps=0.2, clip_eps_high=0.28)
    # both inside [0.8, 1.28]: L = −s0 · 1 − s1 · (−1)
    assert loss.item() == pytest.approx(-s0 + s1, rel=1e-6)
    assert metrics["sequences"] == 2.0 and metrics["tokens"] == 5.0
    assert metrics["policy_loss_sum"] == pytest.approx(-s0 + s1, rel=1e-6)
    assert metrics["clipped_sequences"] == 0.0 and metrics["clipped_tokens"] == 0.0
    assert metrics["sequence_ratio_sum"] == pytest.approx(s0 + s1, rel=1e-6)
    assert metrics["ratio_sum"] == pytest.approx(2 * s0 + 3 * s1, rel=1e-6)
    k3 = sum(math.expm1(x) - x for x in (0.1, 0.3, -0.2, 0.0, -0.1))
    assert metrics["approx_kl_sum"] == pytest.approx(k3, rel=1e-5)
    loss.backward()
    # ∂L_i/∂logπ_t = −Â_i · s_i / |y_i| on each of response i's tokens (GSPO eq. 10)
    close(inputs["logps"].grad, [[-s0 / 2, -s0 / 2, 0.0], [s1 / 3, s1 / 3, s1 / 3]])

    # ε_high = ε = 0.2: s0 = 1.2214 > 1.2 with Â > 0 → clipped, the whole response's gradient 0
    inputs = gspo_inputs()
    loss, metrics = gspo_policy_loss(**inputs, clip_eps=0.2)
    assert loss.item() == pytest.approx(-1.2 + s1, rel=1e-6)
    assert metrics["clipped_sequences"] == 1.0 and metrics["clipped_tokens"] == 2.0
    loss.backward()
    close(inputs["logps"].grad, [[0.0, 0.0, 0.0], [s1 / 3, s1 / 3, s1 / 3]])


def test_gspo_paper_epsilons_clip_whole_sequences() -> None:
    """ε = 3e-4, ε_high = 4e-4 act on the geometric-mean ratio of a whole response."""
    old = torch.zeros(1, 4)
    mask = torch.ones(1, 4)
    # token log ratios 1.2e-3, 0, 2e-4, 0: mean 3.5e-4, s = e^{3.5e-4} is inside 1 + 4e-4 but
    # above 1 + 3e-4
    logps = torch.tensor([[1.2e-3, 0.0, 2.0e-4, 0.0]], requires_grad=True)
    s = math.exp(3.5e-4)
    one = torch.tensor([1.0])
    loss, metrics = gspo_policy_loss(logps, old, one, mask, clip_eps=3e-4, clip_eps_high=4e-4)
    assert loss.item() == pytest.approx(-s, rel=1e-6) and metrics["clipped_sequences"] == 0.0
    loss, metrics = gspo_policy_loss(logps, old, torch.tensor([1.0]), mask, clip_eps=3e-4)
    assert loss.item() == pytest.approx(-(1 + 3e-4), rel=1e-6)
    assert metrics["clipped_sequences"] == 1.0 and metrics["clipped_tokens"] == 4.0
    # the same tokens under PPO with those ε: only the first token (ρ = e^1.2e-3) is clipped
    _, ppo = ppo_policy_loss(logps, old, torch.tensor([1.0]), mask, clip_eps=3e-4)
    assert ppo["clipped_tokens"] == 1.0


def tiny_policy_logps(theta: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[1, R] log π of ``tokens`` under a per-position categorical with logits ``theta``."""
    return torch.log_softmax(theta, dim=-1).gather(-1, tokens[..., None])[..., 0]


@pytest.mark.parametrize(
    ("advantage", "bump", "clipped"),
    [
        (1.5, 0.05, False),  # s ≈ 1.04, inside [0.8, 1.2]
        (-0.5, 0.05, False),
        (2.0, 1.0, True),  # s > 1.2 with Â > 0: the clipped term is taken
        (-1.0, 1.0, False),  # s > 1.2 with Â < 0: min takes the unclipped one
    ],
)
def test_gspo_gradient_flows_through_the_sequence_ratio(
    advantage: float, bump: float, clipped: bool
) -> None:
    """∇L = −Â · s · (1/|y|) · Σ_t ∇log π_t when unclipped, 0 when clipped (GSPO eq. 10)."""
    torch.manual_seed(0)
    tokens = torch.tensor([[2, 0, 3]])
    old_theta = torch.randn(1, 3, 5)
    theta = old_theta.clone()
    theta[0, torch.arange(3), tokens[0]] += bump  # raise each sampled token's logit
    theta.requires_grad_()
    old_logps = tiny_policy_logps(old_theta, tokens)
    logps = tiny_policy_logps(theta, tokens)
    s = torch.exp((logps - old_logps).mean()).item()
    assert (s > 1.2) == (bump == 1.0) and s > 1
    loss, metrics = gspo_policy_loss(
        logps, old_logps, torch.tensor([advantage]), torch.ones(1, 3), clip_eps=0.2
    )
    (grad,) = torch.autograd.grad(loss, theta)
    (grad_log_pi,) = torch.autograd.grad(tiny_policy_logps(theta, tokens).sum(), theta)
    expected = torch.zeros_like(grad) if clipped else -advantage * s / 3 * grad_log_pi
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)
    assert metrics["clipped_sequences"] == float(clipped)
    assert (grad.abs().sum() == 0) == clipped


def test_gspo_advantages_per_token_and_empty_rows() -> None:
    inputs = gspo_inputs()
    per_row, _ = gspo_policy_loss(**inputs, clip_eps=0.2)
    # [N, R] holding each row's value on its real tokens (anything on padding)
    per_token = torch.tensor([[1.0, 1.0, 99.0], [-1.0, -1.0, -1.0]])
    same, _ = gspo_policy_loss(**(gspo_inputs() | {"advantages": per_token}), clip_eps=0.2)
    assert same.item() == pytest.approx(per_row.item())
    with pytest.raises(ValueError, match=r"advantages.*row 1"):
        varying = torch.tensor([[1.0, 1.0, 0.0], [-1.0, -2.0, -1.0]])
        gspo_policy_loss(**(gspo_inputs() | {"advantages": varying}), clip_eps=0.2)
    with pytest.raises(ValueError, match="advantages"):
        gspo_policy_loss(**(gspo_inputs() | {"advantages": torch.zeros(3)}), clip_eps=0.2)
    with pytest.raises(ValueError, match="clip_eps"):
        gspo_policy_loss(**gspo_inputs(), clip_eps=0.0)
    # a row with no real token: no loss, no gradient, not a sequence
    inputs = gspo_inputs()
    inputs["mask"] = torch.tensor([[0, 0, 0], [1, 1, 1]])
    inputs["advantages"] = torch.tensor([5.0, -1.0])
    loss, metrics = gspo_policy_loss(**inputs, clip_eps=0.2)
    assert loss.item() == pytest.approx(math.exp(-0.1), rel=1e-6)
    assert metrics["sequences"] == 1.0 == loss_units(inputs["mask"], "sequence")
    loss.backward()
    assert torch.all(inputs["logps"].grad[0] == 0)


def test_gspo_is_invariant_to_the_micro_batch_split() -> None:
    torch.manual_seed(5)
    lengths = torch.tensor([5, 1, 0, 6, 2, 4])
    mask = (torch.arange(6)[None] < lengths[:, None]).long()  # [6, 6]
    old = -torch.rand(6, 6) * 3
    logps = (old + 0.2 * torch.randn(6, 6)).requires_grad_()
    advantages = torch.randn(6)

    def step(splits: list[slice]) -> tuple[torch.Tensor, float]:
        logps.grad = None
        units = sum(loss_units(mask[s], "sequence") for s in splits)
        total = 0.0
        for s in splits:
            loss, _ = gspo_policy_loss(
                logps[s], old[s], advantages[s], mask[s], clip_eps=0.1, clip_eps_high=0.15
            )
            (loss / units).backward()
            total += loss.item() / units
        return logps.grad.clone(), total

    (whole, whole_loss), (split, split_loss) = (
        step([slice(0, 6)]),
        step([slice(0, 2), slice(2, 4), slice(4, 6)]),
    )
    torch.testing.assert_close(whole, split)
    assert whole_loss == pytest.approx(split_loss)
    # eq. 5's mean over the 5 responses in the loss
    s = torch.exp(
        torch.stack([(logps - old)[i, : lengths[i]].mean() for i in (0, 1, 3, 4, 5)])
    ).detach()
    a = advantages[[0, 1, 3, 4, 5]]
    per_seq = -torch.minimum(s * a, s.clamp(0.9, 1.15) * a)
    assert whole_loss == pytest.approx(float(per_seq.mean()), rel=1e-5)


# --------------------------------------------------------------------------------------------
# REINFORCE++ (eq. 8-10): global normalisation, and k2 in the loss

# 2 prompts × K = 2; lengths 1, 2, 2, 3
PP_REWARDS = torch.tensor([1.0, 0.0, 3.0, 1.0])
PP_MASK = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1]])


def test_reinforce_pp_by_hand() -> None:
    # token values 1 | 0 0 | 3 3 | 1 1 1: μ = 10/8 = 1.25, Σ(x − μ)² = 9.5, σ² = 9.5/7
    advantages = reinforce_pp_advantages(PP_REWARDS, PP_MASK)
    std = math.sqrt(9.5 / 7 + 1e-8)
    a = [(r - 1.25) / std for r in (1.0, 0.0, 3.0, 1.0)]
    close(
        advantages,
        [[a[0], 0, 0], [a[1], a[1], 0], [a[2], a[2], 0], [a[3], a[3], a[3]]],
        atol=1e-5,
    )


def test_reinforce_pp_baseline_by_hand_and_unlike_grpo() -> None:
    # group means 0.5 and 2 → centred 0.5, −0.5, 1, −1
    # tokens 0.5 | −0.5 −0.5 | 1 1 | −1 −1 −1: μ = −1.5/8 = −0.1875, Σ(x − μ)² = 5.46875,
    # σ² = 5.46875/7 = 0.78125
    advantages = reinforce_pp_advantages(PP_REWARDS, PP_MASK, group_size=2)
    std = math.sqrt(0.78125 + 1e-8)
    a = [(c + 0.1875) / std for c in (0.5, -0.5, 1.0, -1.0)]
    close(
        advantages,
        [[a[0], 0, 0], [a[1], a[1], 0], [a[2], a[2], 0], [a[3], a[3], a[3]]],
        atol=1e-5,
    )
    # GRPO normalises each group by its own std: both groups become ±1/√2, the larger reward
    # gap of prompt 1 is forgotten; REINFORCE++ keeps it (|1.3435| vs |0.7778|)
    grpo, _ = grpo_advantages(PP_REWARDS, 2, eps=0.0)
    close(grpo, [2**-0.5, -(2**-0.5), 2**-0.5, -(2**-0.5)], atol=1e-6)
    assert a[0] == pytest.approx(0.7778, abs=1e-4) and a[2] == pytest.approx(1.3435, abs=1e-4)
    assert not torch.allclose(advantages[:, 0], grpo, atol=1e-2)


def test_reinforce_pp_statistics_ignore_padding() -> None:
    padded_mask = torch.cat([PP_MASK, torch.zeros(4, 5, dtype=PP_MASK.dtype)], dim=1)  # [4, 8]
    for group_size in (None, 2):
        plain = reinforce_pp_advantages(PP_REWARDS, PP_MASK, group_size=group_size)
        padded = reinforce_pp_advantages(PP_REWARDS, padded_mask, group_size=group_size)
        torch.testing.assert_close(padded[:, :3], plain)
        assert torch.all(padded[:, 3:] == 0) and torch.all(plain[PP_MASK == 0] == 0)
        real = plain[PP_MASK.bool()]  # [8] real tokens
        assert float(real.mean()) == pytest.approx(0.0, abs=1e-6)
        assert float(real.std()) == pytest.approx(1.0, abs=1e-6)


def test_reinforce_pp_validates() -> None:
    with pytest.raises(ValueError, match="group_size"):
        reinforce_pp_advantages(PP_REWARDS, PP_MASK, group_size=3)
    with pytest.raises(ValueError, match="group_size"):
        reinforce_pp_advantages(PP_REWARDS, PP_MASK, group_size=1)
    with pytest.raises(ValueError, match="rewards"):
        reinforce_pp_advantages(torch.zeros(3), PP_MASK)
    with pytest.raises(ValueError, match="mask"):
        reinforce_pp_advantages(PP_REWARDS, torch.ones(4))


def test_k2_kl_loss_value_and_gradient_by_hand() -> None:
    """k2 = ½ (log π − log π_ref)², ∂k2/∂log π = log π − log π_ref (REINFORCE++'s KL)."""
    logps = torch.tensor([[-1.0, -2.5, float("nan")]], requires_grad=True)
    ref = torch.tensor([[-2.0, -2.0, -1.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, metrics = kl_penalty_loss(logps, ref, mask, estimator="k2", aggregation="token")
    # differences 1.0 and −0.5: ½ · 1 + ½ · 0.25
    assert loss.item() == pytest.approx(0.625)
    assert metrics["kl_sum"] == pytest.approx(0.625)
    loss.backward()
    close(logps.grad, [[1.0, -0.5, 0.0]])
