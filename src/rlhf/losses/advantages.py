"""Advantage estimators for online RL on language models, and masked statistics.

Token-level (PPO): the reward model's score goes on the last real token and a per-token KL
penalty on every token (:func:`ppo_token_rewards`), then GAE (:func:`gae`) with a learned value,
then whitening over the real tokens only (:func:`masked_whiten`).

Sequence-level (critic-free): one scalar advantage per response, from a baseline that does not
depend on the response itself, broadcast to its tokens with :func:`expand_to_tokens`:

- REINFORCE with a moving-average baseline (:func:`reinforce_advantages`);
- RLOO, the mean reward of the *other* K − 1 samples of the prompt (:func:`rloo_advantages`);
- GRPO, the group mean, optionally divided by the group std (:func:`grpo_advantages`);
- ReMax, the reward of the greedy response (:func:`remax_advantages`);
- REINFORCE++ (optionally with the group mean as baseline), normalised over the whole batch's
  tokens rather than per group (:func:`reinforce_pp_advantages`).

Step-level (GRPO with process supervision): each step's reward normalised over the group's
steps, a token's advantage the sum of those from its step on (:func:`process_advantages`).

DAPO's dynamic sampling keeps only the groups whose rewards do not all tie
(:func:`informative_groups`) and samples more until the batch is full
(:func:`dynamic_sampling_refill`).

Layout conventions: B sequences, T tokens, right-padded, ``mask`` [B, T] nonzero at the real
(response) tokens. Group estimators take rewards [B] with ``B = N · K``: the K samples of each
prompt are *contiguous* (rows ``g·K … g·K + K − 1`` belong to prompt g), the order
``repeat_interleave`` of the prompts gives.

Advantages are targets, not things to differentiate: every estimator detaches its inputs and
returns float32. Pure torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rlhf.losses.kl import per_token_kl

Metrics = dict[str, float]


# --------------------------------------------------------------------------------------------
# validation


def _check_tokens(name: str, value: Tensor, like: Tensor, like_name: str) -> None:
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(value).__name__}")
    if value.shape != like.shape:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}, expected {tuple(like.shape)} like {like_name}"
        )


def _check_2d(name: str, value: Tensor) -> None:
    if not isinstance(value, Tensor) or value.ndim != 2:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a [B, T] tensor, got {shape}")


def _check_groups(rewards: Tensor, group_size: int, *, minimum: int = 1) -> None:
    if not isinstance(rewards, Tensor) or rewards.ndim != 1:
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a [B] tensor, got {shape}")
    if not isinstance(group_size, int) or group_size < minimum:
        raise ValueError(f"group_size must be an integer ≥ {minimum}, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"rewards has {rewards.numel()} rows, not a multiple of group_size {group_size}"
        )


# --------------------------------------------------------------------------------------------
# masked statistics


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ of ``values`` where ``mask`` is nonzero (over all elements, or along ``dim``).

    Masked-out elements are replaced by 0 before summing, so padding holding inf or NaN is
    ignored rather than multiplied by 0.
    """
    _check_tokens("mask", mask, values, "values")
    kept = torch.where(mask.bool(), values, torch.zeros_like(values))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over the elements where ``mask`` is nonzero; 0 where there are none."""
    count = masked_sum(torch.ones_like(values), mask, dim)
    return masked_sum(values, mask, dim) / count.clamp(min=1)


def masked_var(values: Tensor, mask: Tensor, *, unbiased: bool = True) -> Tensor:
    """Variance of ``values`` over the elements where ``mask`` is nonzero (a scalar).

    ``unbiased`` divides by n − 1 (Bessel; TRL and OpenRLHF whiten with it), else by n. With
    fewer than 2 elements (or none) it is 0.
    """
    values = values.float()
    mean = masked_mean(values, mask)
    count = masked_sum(torch.ones_like(values), mask)
    squares = masked_sum((values - mean).square(), mask)
    return squares / (count - 1 if unbiased else count).clamp(min=1)


def masked_whiten(
    values: Tensor,
    mask: Tensor,
    *,
    shift_mean: bool = True,
    unbiased: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """Standardise ``values`` with the mean and variance of the real elements only.

    ``(x − μ) / sqrt(σ² + eps)`` with μ, σ² from :func:`masked_mean` / :func:`masked_var` over
    the elements where ``mask`` is nonzero; with ``shift_mean=False`` the mean is added back
    (``μ + (x − μ)/σ``: rescaled, not centred), as TRL does for rewards. Padding (mask 0) is
    returned as 0 and never enters the statistics, so a batch of short responses is whitened
    exactly as if it had no padding.

    Args:
        values: [B, T] (any shape) e.g. advantages.
        mask: same shape, nonzero at real tokens.

    Returns:
        float32, the shape of ``values``. The statistics are of *this* tensor: for a rollout
        split across data-parallel ranks or micro-batches, whiten the whole rollout at once.
    """
    _check_tokens("mask", mask, values, "values")
    values = values.detach().float()
    mean = masked_mean(values, mask)
    var = masked_var(values, mask, unbiased=unbiased)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# --------------------------------------------------------------------------------------------
# token-level: PPO rewards and GAE


def last_token_index(mask: Tensor) -> Tensor:
    """[B] index of the last nonzero position of each row of ``mask`` [B, T].

    Raises ValueError if a row has no real token (an empty response has at least its EOS).
    """
    _check_2d("mask", mask)
    real = mask.bool()
    empty = ~real.any(dim=1)
    if empty.any():
        rows = empty.nonzero().flatten().tolist()
        raise ValueError(f"mask has rows with no real token: {rows[:10]}")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(real)
    return torch.where(real, positions, -1).amax(dim=1)


def ppo_token_rewards(
    scores: Tensor,
    logps: Tensor,
    ref_logps: Tensor,
    mask: Tensor,
    *,
    kl_coef: float,
    estimator: str = "k1",
    clamp: float | None = None,
    max_kl: float | None = None,
    score_tokens: Tensor | None = None,
) -> tuple[Tensor, Metrics]:
    """Per-token rewards of PPO for RLHF (Ziegler et al., 2019, eq. 2; Ouyang et al., 2022, eq. 2).

    The objective ``E[r_φ(x, y)] − β · KL(π‖π_ref)`` as a reward per token::

        reward_t = −β · k(t)                 for every real token t
        reward_T = score − β · k(T)          at the last real token T of the response

    or, with ``score_tokens`` (a dense reward, e.g. a process reward model's steps), the score
    spread over the tokens as given: ``reward_t = score_t − β · k(t)``.

    with ``k(t)`` the chosen per-token KL estimator (:func:`rlhf.losses.kl.per_token_kl`; k1,
    ``log π − log π_ref``, as in InstructGPT). Feed the result to :func:`gae`.

    Args:
        scores: [B] sequence reward of each response (reward model, rules, ...; normalised and
            clipped by the caller, as wanted).
        logps: [B, T] sampling-policy log-probs of the response tokens (the frozen old ones).
        ref_logps: [B, T] reference-model log-probs of the same tokens.
        mask: [B, T] nonzero at real response tokens (right-padded, at least one per row).
        kl_coef: β ≥ 0 (fixed, or the adaptive controller's current value).
        estimator, clamp, max_kl: as in :func:`rlhf.losses.kl.per_token_kl`.
        score_tokens: [B, T] or None: where each score sits, 0 at padding, each row summing
            to its score (None: all of it on the last real token).

    Returns:
        ``(rewards, metrics)``: rewards [B, T] float32, 0 at padding; metrics are sums so they add
        over batches: ``sequences``, ``tokens``, ``score_sum``, ``kl_sum`` (Σ over real tokens
        of k, so ``kl_sum / sequences`` is the mean sequence KL an adaptive controller tracks)
        and ``kl_reward_sum`` (Σ of −β · k).
    """
    _check_2d("logps", logps)
    _check_tokens("ref_logps", ref_logps, logps, "logps")
    _check_tokens("mask", mask, logps, "logps")
    if not isinstance(scores, Tensor) or scores.shape != logps.shape[:1]:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be [B] = ({logps.shape[0]},), got {shape}")
    if not kl_coef >= 0:
        raise ValueError(f"kl_coef must be ≥ 0, got {kl_coef}")
    last = last_token_index(mask)  # [B]
    kl = per_token_kl(
        logps.detach(),
        ref_logps.detach(),
        mask,
        estimator=estimator,
        clamp=clamp,
        max_kl=max_kl,
    )  # [B, T], 0 at padding
    kl_rewards = -kl_coef * kl
    rewards = kl_rewards.clone()
    if score_tokens is None:
        rows = torch.arange(logps.shape[0], device=logps.device)
        rewards[rows, last] += scores.detach().float()
    else:
        _check_tokens("score_tokens", score_tokens, logps, "logps")
        placed = score_tokens.detach().float() * mask
        gap = (placed.double().sum(-1) - scores.detach().double()).abs()
        scale = 1 + placed.double().abs().sum(-1) + scores.detach().double().abs()
        if bool((gap > 1e-4 * scale).any()):
            row = int(gap.argmax())
            raise ValueError(
                f"score_tokens must sum to the scores on real tokens: row {row} sums to "
                f"{float(placed[row].sum()):.6g}, its score is {float(scores[row]):.6g}"
            )
        rewards += placed
    metrics = {
        "sequences": float(logps.shape[0]),
        "tokens": float(mask.bool().sum()),
        "score_sum": float(scores.detach().float().sum()),
        "kl_sum": float(kl.sum()),
        "kl_reward_sum": float(kl_rewards.sum()),
    }
    return rewards, metrics


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016, eq. 16) over token rewards.

    With ``δ_t = r_t + γ V_{t+1} − V_t`` and ``V = 0`` after the last real token (the episode
    ends there: nothing to bootstrap)::

        Â_t = Σ_l (γλ)^l δ_{t+l}          computed backwards:  Â_t = δ_t + γλ Â_{t+1}
        R_t = Â_t + V_t                   the value target (λ-return)

    Padding (mask 0) is *skipped*, not treated as a step: "t + 1" is the next real token, and
    rewards and values at padded positions are ignored. For right-padded responses this is
    exactly "bootstrap 0 after the last real token"; masks with holes (e.g. tool output inside
    a response) chain over the holes (as verl does).

    Args:
        rewards: [B, T] per-token rewards (e.g. :func:`ppo_token_rewards`).
        values: [B, T] value estimates V(s_t) of the state before each response token.
        mask: [B, T] nonzero at real response tokens.
        gamma: discount γ in [0, 1] (1 is usual for RLHF).
        lam: λ in [0, 1]: 0 is one-step TD, 1 is Monte Carlo return minus V.

    Returns:
        ``(advantages, returns)``, both [B, T] float32, detached, 0 at padding.
    """
    _check_2d("rewards", rewards)
    _check_tokens("values", values, rewards, "rewards")
    _check_tokens("mask", mask, rewards, "rewards")
    for name, value in (("gamma", gamma), ("lam", lam)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    rewards, values = rewards.detach().float(), values.detach().float()
    real = mask.bool()
    batch, length = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(batch)  # V of the next real token, 0 past the last
    next_advantage = rewards.new_zeros(batch)
    for t in range(length - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        keep = real[:, t]
        advantages[:, t] = torch.where(keep, advantage, 0.0)
        next_advantage = torch.where(keep, advantage, next_advantage)
        next_value = torch.where(keep, values[:, t], next_value)
    returns = torch.where(real, advantages + values, 0.0)
    return advantages, returns


# --------------------------------------------------------------------------------------------
# sequence-level: REINFORCE, RLOO, GRPO, ReMax


def expand_to_tokens(advantages: Tensor, mask: Tensor) -> Tensor:
    """[B] sequence advantages → [B, T]: each response's value on its real tokens, 0 elsewhere."""
    _check_2d("mask", mask)
    if not isinstance(advantages, Tensor) or advantages.shape != mask.shape[:1]:
        shape = tuple(advantages.shape) if isinstance(advantages, Tensor) else advantages
        raise ValueError(f"advantages must be [B] = ({mask.shape[0]},), got {shape}")
    expanded = advantages.detach().float()[:, None].expand(mask.shape)
    return torch.where(mask.bool(), expanded, 0.0)


def reinforce_advantages(
    rewards: Tensor, baseline: Tensor | float | None, *, momentum: float = 0.9
) -> tuple[Tensor, Tensor]:
    """REINFORCE (Williams, 1992) with an exponential-moving-average baseline.

    ``A_i = r_i − b``, then ``b ← momentum · b + (1 − momentum) · mean(r)``: the baseline used
    for a batch is built from earlier batches only, so it does not depend on the responses it
    is subtracted from (the estimator stays unbiased). A pure function: the caller keeps ``b``
    (a float is easy to checkpoint) and passes it back next step.

    Args:
        rewards: [B] sequence rewards of this batch.
        baseline: the moving average so far; None on the first batch, where this batch's mean
            is both the baseline and the initial average.
        momentum: in [0, 1); higher is slower.

    Returns:
        ``(advantages [B], new_baseline)``, float32, ``new_baseline`` a 0-d tensor.
    """
    _check_groups(rewards, 1)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    rewards = rewards.detach().float()
    mean = rewards.mean() if rewards.numel() else rewards.new_zeros(())
    if baseline is None:
        return rewards - mean, mean
    old = torch.as_tensor(baseline, dtype=torch.float32, device=rewards.device).detach()
    if old.ndim != 0:
        raise ValueError(f"baseline must be a scalar, got shape {tuple(old.shape)}")
    return rewards - old, momentum * old + (1 - momentum) * mean


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO, REINFORCE leave-one-out (Kool et al., 2019; Ahmadian et al., 2024, "Back to Basics").

    For the K samples of a prompt, each is baselined by the mean reward of the other K − 1::

        A_i = r_i − 1/(K − 1) · Σ_{j≠i} r_j  =  K/(K − 1) · (r_i − mean_j r_j)

    Args:
        rewards: [B] with B = N · K, each prompt's K samples contiguous.
        group_size: K ≥ 2.

    Returns:
        [B] float32 advantages; each group's sum to 0.
    """
    _check_groups(rewards, group_size, minimum=2)
    grouped = rewards.detach().float().view(-1, group_size)  # [N, K]
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # [N, K]
    return (grouped - others).flatten()


def tied_groups(rewards: Tensor, group_size: int) -> Tensor:
    """[N] True for the prompts whose K rewards are all equal (exactly).

    Such a group has all-zero group-relative advantages: it contributes no policy gradient,
    only a smaller effective batch (DAPO's dynamic sampling drops them and samples more).
    """
    _check_groups(rewards, group_size)
    grouped = rewards.detach().view(-1, group_size)  # [N, K]
    return grouped.amax(dim=1) == grouped.amin(dim=1)


def informative_groups(rewards: Tensor, group_size: int) -> Tensor:
    """[N] True for the prompts whose K rewards do *not* all tie: ``~tied_groups``.

    The groups that carry a group-relative gradient; DAPO's dynamic sampling (Yu et al., 2025,
    eq. 11: ``0 < |{o_i : is_equivalent(a, o_i)}| < G``) keeps only these.

    Args:
        rewards: [B] with B = N · K, each prompt's K samples contiguous.
        group_size: K ≥ 1.
    """
    return ~tied_groups(rewards, group_size)


def dynamic_sampling_refill(
    kept_groups: int,
    target_groups: int,
    *,
    rounds_done: int,
    max_rounds: int,
    sampled_groups: int | None = None,
    max_prompts: int | None = None,
) -> int:
    """How many more prompts DAPO's dynamic sampling draws next (Yu et al., 2025, Algorithm 1).

    A recipe samples, drops tied groups (:func:`informative_groups`), and asks this function
    how many prompts to sample in the next round; 0 means stop::

        kept, sampled, rounds, n = [], 0, 0, target
        while n:
            groups = rollout(next n prompts)                   # n prompts · K samples
            kept += informative ones; sampled += n; rounds += 1
            n = dynamic_sampling_refill(len(kept), target, rounds_done=rounds,
                                        max_rounds=max_rounds, sampled_groups=sampled)
        batch = kept[:target]                                  # DAPO trims the overshoot

    The answer is 0 once ``kept_groups ≥ target_groups`` or ``rounds_done ≥ max_rounds`` (the
    batch then trains short; the caller logs it). Otherwise it is the shortfall
    ``target − kept``, divided by the fraction of informative groups seen so far when
    ``sampled_groups`` is given and that fraction is known and positive::

        ⌈(target − kept) · sampled / kept⌉      (at least the shortfall)

    so that one more round is expected to fill the batch, and at most ``max_prompts`` when
    given (the memory limit on one round's generation).

    Args:
        kept_groups: informative groups kept so far (≥ 0).
        target_groups: informative groups the batch should hold (≥ 1), e.g.
            ``prompts_per_iteration``.
        rounds_done: sampling rounds done so far (≥ 0).
        max_rounds: the most rounds allowed (≥ 1).
        sampled_groups: prompts sampled so far, all rounds (≥ ``kept_groups``); None or 0:
            refill the bare shortfall.
        max_prompts: cap on one round's prompts (≥ 1), or None.

    Returns:
        The number of prompts to sample next, 0 to stop.
    """
    for name, value, minimum in (
        ("kept_groups", kept_groups, 0),
        ("target_groups", target_groups, 1),
        ("rounds_done", rounds_done, 0),
        ("max_rounds", max_rounds, 1),
        ("sampled_groups", sampled_groups, 0),
        ("max_prompts", max_prompts, 1),
    ):
        if value is None and name in ("sampled_groups", "max_prompts"):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    if sampled_groups is not None and sampled_groups < kept_groups:
        raise ValueError(
            f"sampled_groups ({sampled_groups}) must be ≥ kept_groups ({kept_groups}): "
            "only sampled groups can be kept"
        )
    if kept_groups >= target_groups or rounds_done >= max_rounds:
        return 0
    shortfall = target_groups - kept_groups
    prompts = shortfall
    if sampled_groups and kept_groups:
        prompts = -(-shortfall * sampled_groups // kept_groups)  # ⌈shortfall / rate⌉, exact
    return prompts if max_prompts is None else min(prompts, max_prompts)


def process_advantages(
    step_rewards: Sequence[Tensor],
    step_tokens: Sequence[Sequence[int]],
    mask: Tensor,
    group_size: int,
    *,
    scale: bool = True,
    eps: float = 1e-4,
) -> tuple[Tensor, Metrics]:
    """GRPO's advantages under process supervision (Shao et al., 2024, "DeepSeekMath", §4.1.3).

    Every step j of sample i has a reward r_i,j (a process reward model's P(step correct)),
    placed on the token index(j) where the step ends. Within each prompt's group of K samples,
    all step rewards are normalised together, and a token's advantage is the sum of the
    normalised rewards of the steps ending at or after it::

        r̃_i,j = (r_i,j − mean(R)) / (std(R) + eps)      R: every step reward of the group
        A_i,t = Σ_{j : index(j) ≥ t} r̃_i,j

    so a token is credited with what its own step and the later ones earned. The tokens after
    the last step (EOS, trailing blanks) count as part of it, so the decision to stop is
    credited too. A sample with no step counts as one step of reward 0 on its last token (a process reward model's score of
    a response it cannot read). A group whose step rewards all tie gets A = 0.

    Args:
        step_rewards: B tensors [n_i] (B = N · K, each prompt's K samples contiguous).
        step_tokens: B lists [n_i] of token indices (< the row's real tokens in ``mask``).
        mask: [B, T] nonzero at real response tokens (right-padded, ≥ 1 per row).
        group_size: K ≥ 2.
        scale: divide by the group's std (false: centred only, as Dr. GRPO).
        eps: added to the group's std (Bessel-corrected, as :func:`grpo_advantages`).

    Returns:
        ``(advantages [B, T] float32, 0 at padding, metrics)``; metrics are sums: ``groups``,
        ``tied_groups`` and ``steps`` (the steps scored).
    """
    batch = len(step_rewards)
    if len(step_tokens) != batch or mask.dim() != 2 or mask.shape[0] != batch:
        raise ValueError(
            f"step_rewards ({batch}), step_tokens ({len(step_tokens)}) and mask "
            f"{tuple(mask.shape)} must describe the same rows"
        )
    if group_size < 2 or batch % group_size:
        raise ValueError(f"{batch} rows do not split into groups of {group_size} (K ≥ 2)")
    last = last_token_index(mask)  # [B]
    rewards, tokens = [], []
    for row in range(batch):
        values = step_rewards[row].detach().float().flatten()
        where = [int(t) for t in step_tokens[row]]
        if len(where) != values.numel():
            raise ValueError(f"row {row}: {values.numel()} step rewards, {len(where)} tokens")
        if any(not 0 <= t <= int(last[row]) for t in where):
            raise ValueError(f"row {row}: step tokens {where} outside its {int(last[row]) + 1}")
        if not where:  # no step: one of reward 0 on the last token
            values, where = torch.zeros(1), [int(last[row])]
        else:  # what follows the last step (EOS, a blank line) belongs to it: stopping counts
            where[-1] = int(last[row])
        rewards.append(values)
        tokens.append(where)
    advantages = torch.zeros(mask.shape, dtype=torch.float32)
    tied = 0
    for start in range(0, batch, group_size):
        group = torch.cat(rewards[start : start + group_size])
        spread = group.std() if group.numel() > 1 else torch.tensor(0.0)
        if group.numel() < 2 or float(spread) == 0.0:
            tied += 1
            continue
        mean = group.mean()
        for row in range(start, start + group_size):
            placed = torch.zeros(mask.shape[1])
            normalised = (rewards[row] - mean) / (spread + eps if scale else 1.0)
            placed.index_add_(0, torch.tensor(tokens[row]), normalised)
            advantages[row] = placed.flip(0).cumsum(0).flip(0)  # Σ over steps ending at ≥ t
    advantages = advantages * mask.float()
    return advantages, {
        "groups": float(batch // group_size),
        "tied_groups": float(tied),
        "steps": float(sum(step_rewards[row].numel() for row in range(batch))),
    }


def grpo_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    scale: bool = True,
    eps: float = 1e-4,
) -> tuple[Tensor, Metrics]:
    """GRPO's group-normalised outcome advantages (Shao et al., 2024, §4.1.2).

    For the K samples of a prompt::

        A_i = (r_i − mean(r)) / (std(r) + eps)      scale=True  (GRPO; std with Bessel's n − 1,
                                                                   as torch.std and TRL)
        A_i = r_i − mean(r)                          scale=False (Dr. GRPO, Liu et al., 2025:
                                                                   no difficulty reweighting)

    A group whose rewards all tie gets A = 0 for every sample (exactly, either way).

    Args:
        rewards: [B] with B = N · K, each prompt's K samples contiguous.
        group_size: K ≥ 2 (one sample has no group to compare with).
        scale: divide by the group std.
        eps: added to the std (TRL uses 1e-4).

    Returns:
        ``(advantages [B] float32, metrics)``; metrics are sums: ``groups`` (N) and
        ``tied_groups`` (groups whose rewards all tie; see :func:`tied_groups` for the mask to
        drop them).
    """
    _check_groups(rewards, group_size, minimum=2)
    if not eps >= 0:
        raise ValueError(f"eps must be ≥ 0, got {eps}")
    grouped = rewards.detach().float().view(-1, group_size)  # [N, K]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    tied = tied_groups(rewards, group_size)  # [N]
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    advantages = torch.where(tied[:, None], 0.0, centred).flatten()
    return advantages, {"groups": float(tied.numel()), "tied_groups": float(tied.sum())}


def reinforce_pp_advantages(
    rewards: Tensor,
    mask: Tensor,
    *,
    group_size: int | None = None,
    unbiased: bool = True,
    eps: float = 1e-8,
) -> Tensor:
    """REINFORCE++ advantages (Hu, 2025, eq. 8–10): normalised over the *global* batch.

    Each response's reward (minus its group's mean reward when ``group_size`` is given: the
    "REINFORCE++-baseline" variant) on each of its real tokens, then standardised with the mean
    and std of *all real tokens of all rows* (:func:`masked_whiten`)::

        A_i     = r_i                       (group_size None)
        A_i     = r_i − mean_{j ∈ g(i)} r_j   (group_size K: the K samples of i's prompt)
        Â_{i,t} = (A_i − μ) / sqrt(σ² + eps)  μ, σ² over {A_{i,t} : mask[i, t] = 1}

    Unlike GRPO there is no per-group std: one batch-wide scale, so a group whose rewards
    barely differ is not blown up (the paper's argument against per-prompt normalisation). The
    statistics are token-weighted: a long response counts once per token. Padding never enters
    them. A tied group's centred reward is 0 but its normalised advantage is ``−μ/σ``, not 0
    (drop such groups with :func:`tied_groups` if that matters). The KL is *not* in here:
    REINFORCE++ puts k2 in the loss (:func:`rlhf.losses.policy.kl_penalty_loss` with
    ``estimator="k2"``).

    Args:
        rewards: [N] sequence rewards; with ``group_size`` K, N = P · K with each prompt's K
            samples contiguous.
        mask: [N, R] nonzero at real response tokens.
        group_size: K ≥ 2 for the baseline variant, None for plain REINFORCE++.
        unbiased: the variance with Bessel's n − 1 (as :func:`masked_whiten`), else n.
        eps: added to the variance.

    Returns:
        [N, R] float32, 0 at padding; over the real tokens mean 0 and std 1 (up to eps).
        The statistics are of this batch: give the whole rollout at once, not a micro-batch.
    """
    _check_2d("mask", mask)
    if group_size is None:
        _check_groups(rewards, 1)
    else:
        _check_groups(rewards, group_size, minimum=2)
    if rewards.shape != mask.shape[:1]:
        raise ValueError(f"rewards must be [N] = ({mask.shape[0]},), got {tuple(rewards.shape)}")
    if not eps >= 0:
        raise ValueError(f"eps must be ≥ 0, got {eps}")
    centred = rewards.detach().float()
    if group_size is not None:
        grouped = centred.view(-1, group_size)  # [P, K]
        centred = (grouped - grouped.mean(dim=1, keepdim=True)).flatten()  # [N]
    return masked_whiten(expand_to_tokens(centred, mask), mask, unbiased=unbiased, eps=eps)


def remax_advantages(rewards: Tensor, greedy_rewards: Tensor) -> Tensor:
    """ReMax (Li et al., 2023, Algorithm 1): the greedy response's reward as the baseline.

    ``A_i = r(x, y_i) − r(x, ȳ)`` with ``ȳ`` the greedy (argmax) decoding of the same prompt.

    Args:
        rewards: [B] rewards of the sampled responses.
        greedy_rewards: [B] reward of the greedy response of each row's prompt (repeat it with
            ``repeat_interleave(K)`` when there are K samples per prompt).

    Returns:
        [B] float32 advantages.
    """
    _check_groups(rewards, 1)
    if not isinstance(greedy_rewards, Tensor) or greedy_rewards.shape != rewards.shape:
        shape = (
            tuple(greedy_rewards.shape)
            if isinstance(greedy_rewards, Tensor)
            else type(greedy_rewards).__name__
        )
        raise ValueError(
            f"greedy_rewards has shape {shape}, expected {tuple(rewards.shape)} like rewards"
        )
    return rewards.detach().float() - greedy_rewards.detach().float()
