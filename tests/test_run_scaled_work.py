"""Work that scales with the run, not with the data: the reference pass computes the rows the
run reads (and a resumed run the ones it still lacks), the reward model's normalisation reuses
the final evaluation's scores, and long phases report progress, as log lines without bars."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

import rlhf.engine.progress as progress_module
import rlhf.models.reward as reward_module
import rlhf.recipes.offline_common as offline
import rlhf.recipes.reward_model as rm
from rlhf.config import load_config
from rlhf.engine.progress import Progress
from rlhf.recipes.dpo import DPOConfig, run_dpo
from rlhf.recipes.reward_model import RewardModelConfig, run_reward_model, score_file

from .conftest import TINY_SIZES

PAIRS = 48  # ~36 training pairs; 2 steps of 4 read 8 of them


def dpo_config(tmp_path, model_dir, out="run", cache="cache", **overrides):
    base = {
        "out": str(tmp_path / out),
        "progress": False,
        "tensorboard": False,
        "model": {"path": str(model_dir)},
        "reference": {"cache_dir": str(tmp_path / cache)},
        "data": {
            "train": f"builtin:arithmetic-preferences?n={PAIRS}",
            "eval_fraction": 0.25,
            "eval_max_examples": 5,
            "max_length": 128,
        },
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-3, "schedule": "constant"},
        "eval": {"kl_prompts": 0},
    }
    dotted = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return load_config(DPOConfig, None, dotted, base=base)


class Counted:
    """Records the example rows of every reference pass and of every batch the run reads."""

    def __init__(self, monkeypatch):
        self.computed: list[int] = []  # one entry per row the reference model ran on
        self.read: set[int] = set()  # rows a training step or the evaluation read
        compute, loss = offline.compute_reference_logps, offline.offline_loss

        def counting_compute(reference, batches, *args, **kwargs):
            def seen(batches):
                for batch in batches:
                    self.computed.extend(batch.index.tolist())
                    yield batch

            return compute(reference, seen(batches), *args, **kwargs)

        def reading_loss(model, batch, *args, **kwargs):
            self.read.update(batch.index.tolist())
            return loss(model, batch, *args, **kwargs)

        monkeypatch.setattr(offline, "compute_reference_logps", counting_compute)
        monkeypatch.setattr(offline, "offline_loss", reading_loss)


def full_precompute(monkeypatch):
    """The reference pass of before: every example, in index order, batch after batch."""

    def every_row(loader, eval_batches, trainer, checkpoint):
        count = len(loader.items) + sum(len(batch) for batch in eval_batches)
        size = loader.batch_size
        return [list(range(i, min(i + size, count))) for i in range(0, count, size)]

    monkeypatch.setattr(offline, "reference_plan", every_row)


def cached(folder):
    """The reference cache's log-probs [N, 2] (NaN: not computed) and the rows it holds."""
    [path] = folder.glob("*.safetensors")
    values = load_file(path)["logps"]
    return values, set(torch.nonzero(~values.isnan().any(1)).flatten().tolist())


def losses(result):
    return [row["loss"] for row in result.metrics]


def test_the_reference_pass_computes_only_the_rows_the_run_reads(
    tiny_model_dir, tmp_path, monkeypatch
):
    counted = Counted(monkeypatch)
    result = run_dpo(dpo_config(tmp_path, tiny_model_dir))
    assert result.metrics[-1]["eval_pairs"] == 5  # eval_max_examples
    # each row once, exactly those the two steps and the evaluation read: 8 + 5 of ~48
    assert len(counted.computed) == len(set(counted.computed))
    assert set(counted.computed) == counted.read and len(counted.read) == 8 + 5
    values, rows = cached(tmp_path / "cache")  # the data's rows, NaN where not needed
    assert rows == counted.read and values.shape[0] > 30
    # the first step's reference came from the same batch as the policy's: exactly ln 2
    assert result.metrics[0]["margin_sum"] == 0.0


def test_losses_equal_those_of_a_full_precompute_and_of_a_live_reference(
    tiny_model_dir, tmp_path, monkeypatch
):
    steps = {"train.max_steps": 3}
    partial = run_dpo(dpo_config(tmp_path, tiny_model_dir, out="a", cache="ca", **steps))
    live = run_dpo(
        dpo_config(tmp_path, tiny_model_dir, out="b", **steps, **{"reference.precompute": False})
    )
    with monkeypatch.context() as patch:
        counted = Counted(patch)
        full_precompute(patch)
        full = run_dpo(dpo_config(tmp_path, tiny_model_dir, out="c", cache="cc", **steps))
    assert len(set(counted.computed)) == len(counted.computed) > 3 * 4 + 5  # every row
    assert losses(partial) == pytest.approx(losses(full), abs=1e-6)
    assert partial.metrics[-1]["eval_loss"] == pytest.approx(
        full.metrics[-1]["eval_loss"], abs=1e-6
    )
    # computed in the training batches themselves, the reference equals a live one exactly
    assert losses(partial) == losses(live)


def test_a_resumed_run_computes_the_rows_it_lacks_and_matches_an_uninterrupted_one(
    tiny_model_dir, tmp_path, monkeypatch
):
    straight = run_dpo(
        dpo_config(tmp_path, tiny_model_dir, out="a", cache="ca", **{"train.max_steps": 4})
    )
    first = run_dpo(dpo_config(tmp_path, tiny_model_dir, out="b", **{"train.save_every": 2}))
    before, had = cached(tmp_path / "cache")
    counted = Counted(monkeypatch)
    resumed = run_dpo(
        dpo_config(tmp_path, tiny_model_dir, out="b", **{"train.max_steps": 4}), resume=True
    )
    # steps 3 and 4 read rows the first part never computed: those alone are computed now
    assert counted.computed and not had & set(counted.computed)
    assert counted.read <= had | set(counted.computed)
    after, now = cached(tmp_path / "cache")
    assert now == had | set(counted.computed)
    assert torch.equal(after[sorted(had)], before[sorted(had)])  # kept as they were
    assert losses(first) == losses(straight)[:2]
    assert losses(resumed) == losses(straight)[2:]
    assert resumed.metrics[-1]["eval_loss"] == straight.metrics[-1]["eval_loss"]
    # a rerun of the finished run's steps reads them all from the cache
    counted.computed.clear()
    run_dpo(dpo_config(tmp_path, tiny_model_dir, out="c", **{"train.max_steps": 4}))
    assert counted.computed == []


def test_the_reference_pass_and_evaluation_log_progress_without_bars(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)  # a line at every batch
    with caplog.at_level(logging.INFO, logger="rlhf"):
        run_dpo(dpo_config(tmp_path, tiny_model_dir))
    assert "reference log-probs: 4/13 examples" in caplog.text
    assert "reference log-probs: 13/13 examples" in caplog.text
    assert "held-out evaluation: 5/5 examples" in caplog.text


def test_progress_lines_come_at_the_interval_with_the_time_left(caplog):
    now = [0.0]
    with (
        caplog.at_level(logging.INFO, logger="rlhf"),
        Progress("scoring", 80, "rows", enabled=False, interval=10, clock=lambda: now[0]) as bar,
    ):
        for _ in range(8):
            now[0] += 3.0
            bar.update(10)
    lines = [record.getMessage() for record in caplog.records]
    # at 12 s (40 done) and 24 s (80 done): every 10 s at most, none in between
    assert lines == ["scoring: 40/80 rows, 12.0 s, ~12 s left", "scoring: 80/80 rows, 24.0 s"]


# ------------------------------------------------------------------------------ reward model


def rm_config(tmp_path, *overrides):
    base = {
        "out": str(tmp_path / "rm"),
        "progress": False,
        "tensorboard": False,
        "model": {"tiny": dict(TINY_SIZES, vocab_size=300, hidden_size=64, intermediate_size=128)},
        "data": {
            "train": "builtin:arithmetic-rankings?n=60",
            "max_length": 48,
            "eval_fraction": 0.2,
        },
        "train": {"max_steps": 3, "batch_size": 4, "lr": 3e-3},
    }
    return load_config(RewardModelConfig, None, list(overrides), base=base)


def test_normalisation_reuses_the_final_evaluations_scores(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)
    scored = {"evaluation": 0, "normalisation": 0}
    fits = []
    evaluation, single, packed = (
        rm.reward_logits,
        reward_module.reward_logits,
        (reward_module.packed_reward_logits),
    )

    def evaluation_rows(model, input_ids, attention_mask):
        scored["evaluation"] += input_ids.shape[0]
        return evaluation(model, input_ids, attention_mask)

    def single_rows(model, input_ids, attention_mask):
        scored["normalisation"] += input_ids.shape[0]
        return single(model, input_ids, attention_mask)

    def packed_rows(model, input_ids, attention_mask, position_ids, response_end):
        scored["normalisation"] += response_end.numel()
        return packed(model, input_ids, attention_mask, position_ids, response_end)

    fit = rm.fit_normalization

    def both_fits(scorer, references, batch_size, max_length, known=None, progress=False):
        counts = dict(scored)
        fits.append(fit(scorer, references, batch_size, max_length))  # every reference scored
        scored.update(counts)
        fits.append(fit(scorer, references, batch_size, max_length, known, progress))
        return fits[-1]

    monkeypatch.setattr(rm, "reward_logits", evaluation_rows)
    monkeypatch.setattr(reward_module, "reward_logits", single_rows)
    monkeypatch.setattr(reward_module, "packed_reward_logits", packed_rows)
    monkeypatch.setattr(rm, "fit_normalization", both_fits)
    with caplog.at_level(logging.INFO, logger="rlhf"):
        result = run_reward_model(rm_config(tmp_path))
    responses = int(fits[-1]["count"])  # the held-out responses are the references
    assert responses > 20
    # the final evaluation scored each held-out response once; normalisation none again
    assert scored == {"evaluation": responses, "normalisation": 0}
    scratch, shared = fits
    assert shared["gain"] == pytest.approx(scratch["gain"], rel=1e-5)
    assert shared["bias"] == pytest.approx(scratch["bias"], rel=1e-5, abs=1e-6)
    assert shared["raw_mean"] == pytest.approx(scratch["raw_mean"], rel=1e-5, abs=1e-6)
    assert f"normalisation scoring: {responses}/{responses} responses" in caplog.text
    assert "held-out evaluation: " in caplog.text

    # rlhf score: progress lines too, with bars off
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"prompt": f"{a}+1=", "completion": str(a + 1)}) + "\n" for a in range(10)
        )
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rlhf"):
        score_file(
            str(result.model_dir), str(rows), tmp_path / "out.jsonl", batch_size=4, progress=False
        )
    assert "scoring: 4/10 rows" in caplog.text and "scoring: 10/10 rows" in caplog.text
