"""Best-of-N: the order-statistics estimator, selection, the curve, and RAFT's pieces."""

from __future__ import annotations

import csv
import itertools
import json
import math

import pytest
import torch

from rlhf.config import ConfigError, load_config
from rlhf.eval.best_of_n import (
    BestOfNReport,
    best_of_n_estimates,
    best_of_n_sizes,
    evaluate_best_of_n,
    expected_best_of_n,
)
from rlhf.eval.sampling import sample_candidates, top_k_per_prompt
from rlhf.eval.stats import best_of_n_kl
from rlhf.recipes.best_of_n import write_report
from rlhf.recipes.raft import RAFTConfig, round_prompts
from rlhf.rollout import SamplingParams
from rlhf.rollout.factory import load_engine


def brute_force_best_of_n(rewards: list[float], values: list[float], n: int) -> float:
    """Average over every n-subset of the value of its best sample (ties: uniformly)."""
    total, subsets = 0.0, 0
    for subset in itertools.combinations(range(len(rewards)), n):
        best = max(rewards[i] for i in subset)
        winners = [values[i] for i in subset if rewards[i] == best]
        total += sum(winners) / len(winners)
        subsets += 1
    return total / subsets


def test_expected_best_of_n_equals_enumerating_every_subset():
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 4, (5, 7), generator=generator).float()  # many ties
    values = torch.randn(5, 7, generator=generator)
    for n in range(1, 8):
        got = expected_best_of_n(rewards, n, values)
        expected = [
            brute_force_best_of_n(rewards[p].tolist(), values[p].tolist(), n) for p in range(5)
        ]
        torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(expected_best_of_n(rewards, 1, values), values.double().mean(-1))
    torch.testing.assert_close(expected_best_of_n(rewards, 7), rewards.double().max(-1).values)


def test_expected_best_of_n_is_exact_for_large_sample_counts():
    rewards = torch.arange(64, dtype=torch.float32)[None]  # distinct: E[max of n of 0..63]
    for n in (1, 2, 16, 64):
        expected = sum(i * math.comb(i, n - 1) for i in range(64)) / math.comb(64, n)
        assert float(expected_best_of_n(rewards, n)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="n=65"):
        expected_best_of_n(rewards, 65)


def test_best_of_n_kl_and_sizes():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    assert best_of_n_sizes(16) == [1, 2, 4, 8, 16]
    assert best_of_n_sizes(12) == [1, 2, 4, 8, 12]
    assert best_of_n_sizes(1) == [1]


def test_top_k_per_prompt_orders_keeps_ties_stable_and_filters():
    rewards = torch.tensor([[0.1, 0.9, 0.5, 0.9], [0.0, 0.0, 0.0, 0.0]])
    assert top_k_per_prompt(rewards, 1) == [[1], [0]]
    assert top_k_per_prompt(rewards, 3) == [[1, 3, 2], [0, 1, 2]]
    assert top_k_per_prompt(rewards, 2, min_reward=0.5) == [[1, 3], []]


def test_curve_is_monotone_with_gold_following_the_picks():
    rewards = torch.rand(20, 16, generator=torch.Generator().manual_seed(1))
    gold = -rewards  # a gold reward that disagrees with the proxy entirely
    points = best_of_n_estimates(rewards, gold)
    assert [p.n for p in points] == [1, 2, 4, 8, 16]
    assert all(a.reward < b.reward for a, b in itertools.pairwise(points))
    assert all(a.gold > b.gold for a, b in itertools.pairwise(points))
    assert points[0].gold == pytest.approx(-points[0].reward)


def length_reward(prompts, responses):
    """A reward that a random tiny model's samples spread over: more digits is better."""
    return torch.tensor([float(sum(c.isdigit() for c in r)) for r in responses])


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    return load_engine(tiny_model_dir, batch_size=32)


def test_evaluate_best_of_n_end_to_end(engine, tmp_path):
    prompts = [f"What is {a} + {a}?\n" for a in range(10, 16)]
    params = SamplingParams(max_new_tokens=8, num_samples=8, seed=0)
    report = evaluate_best_of_n(engine, prompts, params, length_reward, gold=length_reward)
    assert [p.n for p in report.points] == [1, 2, 4, 8]
    assert all(a.reward <= b.reward for a, b in itertools.pairwise(report.points))
    assert report.points[-1].reward > report.points[0].reward
    assert all(p.gold == pytest.approx(p.reward) for p in report.points)
    assert [p.kl for p in report.points] == [best_of_n_kl(n) for n in (1, 2, 4, 8)]
    assert len(report.samples) == 6 and all(len(s.extra["rewards"]) == 8 for s in report.samples)
    paths = write_report(report, tmp_path)
    rows = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    assert [row["n"] for row in rows] == [1, 2, 4, 8]
    with paths["csv"].open() as file:
        assert next(csv.reader(file)) == ["n", "kl", "reward", "reward_se", "gold", "gold_se"]


def test_sample_candidates_keeps_the_best_k_scored(engine):
    prompts = ["What is 10 + 10?\n", "What is 20 + 20?\n"]
    params = SamplingParams(max_new_tokens=8, num_samples=6, seed=1)
    everything = sample_candidates(engine, prompts, params, length_reward)
    best = sample_candidates(engine, prompts, params, length_reward, keep_top=2)
    for full, top in zip(everything, best, strict=True):
        assert len(full.responses) == 6 and len(top.responses) == 2
        assert top.extra["rewards"] == sorted(full.extra["rewards"], reverse=True)[:2]
        assert set(top.responses) <= set(full.responses)
    with pytest.raises(ValueError, match="needs a reward"):
        sample_candidates(engine, prompts, params, keep_top=1)


def test_raft_prompts_cycle_through_a_seeded_shuffle():
    prompts = [f"p{i}" for i in range(5)]
    first = round_prompts(prompts, 3, 0, seed=0)
    second = round_prompts(prompts, 3, 3, seed=0)
    assert sorted(first + second[:2]) == prompts  # one pass over all before any repeats
    assert second[2] == first[0]
    assert round_prompts(prompts, 3, 0, seed=0) == first


def test_raft_config_needs_an_init_sft_for_a_tiny_model():
    base = {"prompts": "builtin:arithmetic", "reward": {"rule": "arithmetic"}}
    with pytest.raises(ConfigError, match="init_sft"):
        load_config(RAFTConfig, base={**base, "model": {"tiny": {}}})
    with pytest.raises(ConfigError, match="reward"):
        load_config(RAFTConfig, base={**base, "model": {"path": "x"}, "reward": {}})
    config = load_config(RAFTConfig, base={**base, "model": {"path": "x"}})
    assert config.raft.num_samples == 8 and config.sampling.params(8, 0).num_samples == 8


def test_report_plot_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    rewards = torch.rand(4, 4, generator=torch.Generator().manual_seed(2))
    report = BestOfNReport(best_of_n_estimates(rewards, rewards), [], 4, 4, 1.0)
    assert write_report(report, tmp_path)["png"].stat().st_size > 0
