from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.engine.schedule import lr_multiplier
from rlhf.engine.trainer import TrainConfig, Trainer, TrainingDiverged, latest_checkpoint
from rlhf.recipes.lm import lm_loss, make_loader


def fresh_model(tiny_model_dir):
    from rlhf.models.load import load_model

    return load_model(str(tiny_model_dir))


def make_trainer(model, examples, tokenizer, out, **overrides):
    options = dict(max_steps=6, batch_size=8, lr=1e-2, warmup_steps=2, seed=0, save_every=3)
    config = TrainConfig(**(options | overrides))
    loader = make_loader(
        examples,
        batch_size=config.batch_size,
        pad_token_id=tokenizer.pad_token_id,
        packing=False,
        max_length=128,
        seed=0,
    )
    return Trainer(model, config, loader, lm_loss, out, tensorboard=False, progress=False)


def test_accumulation_split_gives_the_same_update(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    whole = fresh_model(tiny_model_dir)
    split = fresh_model(tiny_model_dir)
    # Adam's first update is lr · g / (|g| + eps): for a gradient element far below eps it
    # multiplies float rounding by lr / eps (1e6 at eps=1e-8; an element 2e-6 off was seen on
    # an AVX512-BF16 CPU), so eps is raised to where rounding stays under the tolerance
    options = dict(max_steps=1, adam_eps=1e-6)
    make_trainer(whole, examples, tiny_tokenizer, tmp_path / "a", batch_size=8, **options).train()
    make_trainer(
        split, examples, tiny_tokenizer, tmp_path / "b", batch_size=2, grad_accum=4, **options
    ).train()
    for (name, p), q in zip(whole.named_parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


class StopAt:
    def __init__(self, step):
        self.step = step

    def on_step_end(self, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt


def test_resume_continues_exactly(tiny_model_dir, tiny_tokenizer, examples, tmp_path):
    straight = make_trainer(fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "a")
    expected = [row["loss"] for row in straight.train().history]

    interrupted = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "b"
    )
    interrupted.callbacks.append(StopAt(5))  # dies after step 5; last checkpoint is step 3
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    checkpoint = latest_checkpoint(tmp_path / "b")
    assert checkpoint is not None and checkpoint.name.endswith("0000003")

    # a new process would start from a freshly loaded model, so do the same
    resumed = make_trainer(fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "b")
    history = resumed.train(resume_from=checkpoint).history
    assert [row["loss"] for row in history] == pytest.approx(expected[3:], rel=1e-6, abs=1e-7)
    # the metrics file holds each step once, the dead run's step 4 and 5 rows replaced
    rows = [
        json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [row["step"] for row in rows if row["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_nan_loss_names_step_and_checkpoint(tiny_model_dir, tiny_tokenizer, examples, tmp_path):
    calls = {"n": 0}

    def exploding_loss(model, batch):
        calls["n"] += 1
        loss, metrics = lm_loss(model, batch)
        return (loss * float("nan") if calls["n"] == 5 else loss), metrics

    trainer = make_trainer(fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path)
    trainer.loss_fn = exploding_loss
    with pytest.raises(
        TrainingDiverged,
        match=r"step 5: the loss is nan; the update was not applied; last .*step-0000003",
    ):
        trainer.train()


def test_metrics_sinks_write_jsonl_and_tensorboard(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    trainer = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path, max_steps=2
    )
    trainer._tensorboard = True
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "time"} <= set(rows[0])
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_lr_schedule_shapes():
    kwargs = dict(warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_multiplier(0, schedule="cosine", **kwargs) == pytest.approx(0.1)
    assert lr_multiplier(9, schedule="cosine", **kwargs) == pytest.approx(1.0)
    assert lr_multiplier(60, schedule="cosine", **kwargs) == pytest.approx(0.55)
    assert lr_multiplier(110, schedule="cosine", **kwargs) == pytest.approx(0.1)
    assert lr_multiplier(60, schedule="linear", **kwargs) == pytest.approx(0.55)
    assert lr_multiplier(100, schedule="constant", **kwargs) == 1.0
    assert math.isclose(lr_multiplier(35, schedule="linear", **kwargs), 0.1 + 0.9 * 0.75)


def test_metrics_of_unlogged_steps_reach_the_next_logged_row(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    """With log_every=2 a metric that only odd steps report (as online recipes report their
    rollout metrics on a rollout's first step) is not lost: the next logged row carries it."""
    calls = {"n": 0}

    def sometimes(model, batch):
        calls["n"] += 1
        loss, metrics = lm_loss(model, batch)
        extra = {"rare": float(calls["n"])} if calls["n"] % 2 else {}
        return loss, {**metrics, **extra}

    trainer = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path, max_steps=4, log_every=2
    )
    trainer.loss_fn = sometimes
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if row["split"] == "train"]
    assert [row["step"] for row in train_rows] == [2, 4]
    assert [row["rare"] for row in train_rows] == [1.0, 3.0]


def test_bf16_mixed_precision_on_cpu_only_when_asked_and_supported(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path, monkeypatch, caplog
):
    import rlhf.engine.trainer as trainer_module

    def autocast_of(mixed_precision, units):
        monkeypatch.setattr(trainer_module, "cpu_has_bf16_units", lambda: units)
        trainer = make_trainer(
            fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "t",
            max_steps=1, mixed_precision=mixed_precision, device="cpu",
        )  # fmt: skip
        return trainer

    assert autocast_of("auto", True).autocast_dtype is None  # CPU runs stay fp32 by default
    assert autocast_of("no", True).autocast_dtype is None
    with caplog.at_level("WARNING", logger="rlhf"):
        assert autocast_of("bf16", False).autocast_dtype is None
    assert "bf16 matrix units" in caplog.text
    trainer = autocast_of("bf16", True)
    assert trainer.autocast_dtype == torch.bfloat16
    # the loss and the loader (an online recipe's rollouts) both run under bf16 autocast
    seen = []

    def recording(fetch):
        def next_batch():
            seen.append(("loader", torch.is_autocast_enabled("cpu")))
            return fetch()

        return next_batch

    def loss_fn(model, batch):
        seen.append(
            ("loss", torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        )
        return lm_loss(model, batch)

    monkeypatch.setattr(trainer.loader, "next_batch", recording(trainer.loader.next_batch))
    trainer.loss_fn = loss_fn
    result = trainer.train()
    assert seen == [("loader", True), ("loss", torch.bfloat16)]
    assert math.isfinite(result.history[-1]["loss"])
