"""DPO on a real pretrained model (stories260K): preferring stories with a word makes the
policy write it more often on held-out prompts, at a finite KL from the reference.

A small version of ``benchmarks/dpo_stories.py`` (fewer prompts, samples and steps); the pure
parts (word matching, pair building, word choice) are checked without a model.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from .conftest import STORIES, require_shared

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_experiment():
    # the script imports its neighbour ``_harness`` as benchmarks do when run as scripts
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("dpo_stories", BENCHMARKS / "dpo_stories.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["dpo_stories"] = module
    spec.loader.exec_module(module)
    return module


stories = _load_experiment()


def test_contains_word_matches_whole_words_in_any_case():
    assert stories.contains_word("They went to play.", "play")
    assert stories.contains_word("Play with me!", "play")
    assert stories.contains_word("a big, big dog", "big")
    assert not stories.contains_word("She was playing.", "play")
    assert not stories.contains_word("a display", "play")


def test_build_pairs_chosen_has_the_word_and_uses_each_sample_once():
    prompts = ["A", "B", "C"]
    responses = [
        [" x dog", " y", " z dog", " w"],  # two with, two without: two pairs
        [" dog", " dog"],  # nothing without the word: no pair
        [" a", " b dog", " c", " d"],  # one with: one pair
    ]
    pairs = stories.build_pairs(prompts, responses, "dog", per_prompt=5, seed=0)
    assert [p["prompt"] for p in pairs] == ["A", "A", "C"]
    for pair in pairs:
        assert stories.contains_word(pair["chosen"], "dog")
        assert not stories.contains_word(pair["rejected"], "dog")
    used = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    assert len(used) == len(set(used))
    assert len(stories.build_pairs(prompts, responses, "dog", per_prompt=1, seed=0)) == 2


def test_pick_word_is_nearest_a_quarter_inside_the_window():
    assert stories.pick_word({"a": 0.05, "b": 0.12, "c": 0.31, "d": 0.5}) == "c"
    with pytest.raises(RuntimeError, match="no candidate word"):
        stories.pick_word({"a": 0.05, "d": 0.5})


def test_story_prompts_are_distinct_and_seeded():
    prompts = stories.story_prompts(60, seed=3)
    assert len(set(prompts)) == 60
    assert prompts == stories.story_prompts(60, seed=3)


def test_dpo_raises_the_word_rate_on_held_out_prompts(tmp_path):
    model_path = require_shared(STORIES)
    run = stories.LossRun
    settings = stories.Settings(
        train_prompts=48,
        held_out_prompts=24,
        samples_per_prompt=8,
        eval_samples_per_prompt=8,
        max_new_tokens=32,
        runs=(
            run("dpo", beta=0.1, lr=5e-5, steps=30),
            run("ipo", beta=1.0, lr=5e-5, steps=30),
            run("hinge", beta=0.1, lr=5e-5, steps=30),
        ),
    )
    figures = stories.run_experiment(settings, tmp_path, model_path)

    base = figures["base"]
    assert figures["pairs"] >= 30, figures["pairs"]
    assert 0.0 < base["rate"] < 0.5, base
    # the base policy against itself: the estimator reads 0 (same forward pass both sides)
    assert abs(base["kl"]) < 1e-3, base
    for name, result in figures["runs"].items():
        # 192 held-out samples: a rise of 0.25 is many standard errors (~0.03 at the base rate)
        assert result["rate"] >= base["rate"] + 0.25, (name, base["rate"], result)
        assert math.isfinite(result["kl"]) and 0.0 < result["kl"] < 50.0, (name, result)
        assert result["eval_accuracy"] > 0.6, (name, result)
