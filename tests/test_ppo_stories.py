"""PPO on a real pretrained model (stories260K): a reward for stories with a word makes the
policy write it more often on held-out prompts, at a bounded KL from the reference.

A small version of ``benchmarks/ppo_stories.py`` (fewer iterations and held-out prompts).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

from .conftest import STORIES, require_shared

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_experiment():
    # the script imports its neighbours (``_harness``, ``dpo_stories``) as scripts do
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("ppo_stories", BENCHMARKS / "ppo_stories.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["ppo_stories"] = module
    spec.loader.exec_module(module)
    return module


stories = _load_experiment()


def test_ppo_raises_the_word_rate_on_held_out_prompts_at_a_bounded_kl(tmp_path):
    model_path = require_shared(STORIES)
    settings = stories.Settings(
        train_prompts=64, held_out_prompts=24, iterations=7, eval_samples=8, kl_target=3.0
    )
    figures = stories.run_experiment(settings, tmp_path, model_path)
    line = stories.report(figures, json_only=True)
    assert line["base_rate"] < 0.3
    assert figures["rate"] > figures["base_rate"] + 0.2
    assert 0 < figures["kl"] < 10 and math.isfinite(figures["kl"])
    assert figures["rollout_rates"][-1] > figures["rollout_rates"][0]
