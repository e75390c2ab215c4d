"""The engine's safety rails: divergence never reaches disk, Ctrl-C saves, logs close in bounded
time, resume falls back past damage and checks what changed (tests/test_cli_fail_safe.py runs
the same through the command line, recipe by recipe)."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config import ConfigError, read_yaml
from rlhf.engine.metrics import JsonlSink
from rlhf.engine.trainer import (
    CheckpointDamaged,
    TrainingDiverged,
    TrainingInterrupted,
    complete_checkpoints,
    latest_checkpoint,
)
from rlhf.models.finite import NonFiniteError, check_finite_logits
from rlhf.recipes.lm import lm_loss
from rlhf.recipes.sft import SFTConfig
from tests.test_engine import StopAt, fresh_model, make_trainer


def weights(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def assert_finite_checkpoints(out: Path) -> None:
    for folder in complete_checkpoints(out / "checkpoints"):
        for name, tensor in load_file(folder / "trainable.safetensors").items():
            assert torch.isfinite(tensor).all(), f"{folder}: {name}"


def nan_gradient_at(steps, parameter_name="model.layers.0.mlp.up_proj.weight"):
    """A loss function whose loss stays finite while one parameter's gradient turns NaN at
    the given (1-based) calls: the case a loss-only guard let through."""
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        loss, metrics = lm_loss(model, batch)
        if calls["n"] in steps:
            weight = dict(model.named_parameters())[parameter_name]
            # d/dw sqrt(w - w) at 0 is inf and 0 · inf is NaN: the value added is 0
            loss = loss + 0.0 * torch.sqrt((weight - weight.detach()).abs()).sum()
        return loss, metrics

    return loss_fn


# ---------------------------------------------------------------- divergence


def test_a_nan_gradient_behind_a_finite_loss_stops_before_the_update(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    model = fresh_model(tiny_model_dir)
    trainer = make_trainer(model, examples, tiny_tokenizer, tmp_path, max_steps=6, save_every=2)
    trainer.loss_fn = nan_gradient_at({4})
    before = {}

    class Snapshot:
        def on_step_end(self, step, metrics):
            before.update(weights(model))

    trainer.callbacks.append(Snapshot())
    with pytest.raises(TrainingDiverged) as caught:
        trainer.train()
    message = str(caught.value)
    assert message.startswith("step 4: the gradient norm is nan")
    assert "model.layers.0.mlp.up_proj.weight" in message
    assert "the update was not applied" in message
    assert message.endswith(
        "Lower train.lr or train.max_grad_norm, or set train.skip_nonfinite_steps to skip rare "
        "bad steps"
    )
    assert str(tmp_path / "checkpoints" / "step-0000002") in message
    # the weights are those after step 3: nothing of step 4 reached them
    for name, tensor in weights(model).items():
        assert torch.equal(tensor, before[name]), name
    assert_finite_checkpoints(tmp_path)


def test_skip_nonfinite_steps_skips_within_its_budget(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path, caplog
):
    model = fresh_model(tiny_model_dir)
    trainer = make_trainer(
        model, examples, tiny_tokenizer, tmp_path, max_steps=6, save_every=3,
        skip_nonfinite_steps=2,
    )  # fmt: skip
    trainer.loss_fn = nan_gradient_at({2, 4})
    with caplog.at_level(logging.WARNING, logger="rlhf"):
        result = trainer.train()
    assert result.final_step == 6
    assert "step 2: the gradient norm is nan" in caplog.text
    assert "(2 of train.skip_nonfinite_steps=2)" in caplog.text
    skipped = [row.get("skipped_steps") for row in result.history]
    assert skipped == [None, 1.0, None, 2.0, None, None]
    state = json.loads((tmp_path / "checkpoints/step-0000006/trainer_state.json").read_text())
    assert state["skipped_steps"] == 2
    assert_finite_checkpoints(tmp_path)

    # a third bad step is beyond the budget
    again = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "b", max_steps=6,
        skip_nonfinite_steps=2,
    )  # fmt: skip
    again.loss_fn = nan_gradient_at({1, 2, 3})
    with pytest.raises(TrainingDiverged, match=r"step 3: .* after skipping 2 such step"):
        again.train()


def test_non_finite_weights_are_never_saved_or_exported(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    from rlhf.models.load import save_model

    model = fresh_model(tiny_model_dir)
    trainer = make_trainer(model, examples, tiny_tokenizer, tmp_path, max_steps=2)
    with torch.no_grad():
        model.model.norm.weight[3] = float("inf")
    with pytest.raises(TrainingDiverged, match=r"step 0: the weights hold NaN .*model.norm.weight"):
        trainer.save_checkpoint()
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
    with pytest.raises(NonFiniteError, match=r"refusing to save .*model.norm.weight"):
        save_model(model, tiny_tokenizer, tmp_path / "export")
    assert not (tmp_path / "export").exists()


class WrappedLoader:
    """A loader that behaves as the one it wraps, except where a subclass says otherwise."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class FailingLoader(WrappedLoader):
    """A loader whose batch at a given call raises what a rollout from a broken policy raises."""

    def __init__(self, loader, fail_at):
        super().__init__(loader)
        self.fail_at, self.calls = fail_at, 0

    def next_batch(self):
        self.calls += 1
        if self.calls == self.fail_at:
            raise NonFiniteError("sampling: the model's next-token logits hold NaN or infinity")
        return self.loader.next_batch()


def test_a_broken_rollout_stops_the_run_naming_step_and_checkpoint(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    trainer = make_trainer(fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path)
    trainer.loader = FailingLoader(trainer.loader, fail_at=5)
    with pytest.raises(TrainingDiverged) as caught:
        trainer.train()
    assert str(caught.value) == (
        "step 5: sampling: the model's next-token logits hold NaN or infinity; last checkpoint "
        f"(its weights are finite): {tmp_path / 'checkpoints' / 'step-0000003'}"
    )


def test_sampling_refuses_a_diverged_policy(eos_engine):
    """``generate``'s path; tests/test_rollout_compiled.py checks the compiled one."""
    from rlhf.rollout.types import SamplingParams

    params = SamplingParams(max_new_tokens=4, num_samples=2, seed=0)
    prompts = ["1 + 2 =", "3 + 4 ="]
    model = eos_engine.model
    saved = weights(model)
    try:
        # finite weights grown huge: the logits overflow, the sampler must not draw from them
        with torch.no_grad():
            model.model.norm.weight.fill_(3e38)
        for greedy in (True, False):
            with pytest.raises(NonFiniteError, match="sampling: the model's next-token logits"):
                eos_engine.generate(prompts, dataclasses.replace(params, temperature=1 - greedy))
        with torch.no_grad():
            model.model.norm.weight.copy_(saved["model.norm.weight"])
            model.lm_head.weight[0, 0] = float("nan")
        with pytest.raises(NonFiniteError, match=r"sampling: .*weights .*lm_head.weight"):
            eos_engine.generate(prompts, params)
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(saved[name])
    assert len(eos_engine.generate(prompts, params)) == 4


def test_finite_logit_check_allows_masked_tokens():
    logits = torch.randn(4, 50)
    logits[:, :10] = -float("inf")  # top-k / top-p filtered tokens
    check_finite_logits(logits, "sampling")
    for bad in (float("nan"), float("inf")):
        broken = logits.clone()
        broken[2, 30] = bad
        with pytest.raises(NonFiniteError):
            check_finite_logits(broken, "sampling")


# ---------------------------------------------------------------- Ctrl-C


def interrupt_at(calls_to_interrupt, presses=1):
    """A loss function that sends this process SIGINT ``presses`` times during the given calls."""
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] in calls_to_interrupt:
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)
        return lm_loss(model, batch)

    return loss_fn


def test_first_ctrl_c_finishes_the_step_saves_and_resumes_exactly(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    straight = make_trainer(fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "a")
    expected = [row["loss"] for row in straight.train().history]

    trainer = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "b", save_every=0
    )
    trainer.loss_fn = interrupt_at({2})
    with pytest.raises(TrainingInterrupted) as caught:
        trainer.train()
    assert caught.value.step == 2
    assert caught.value.checkpoint == tmp_path / "b" / "checkpoints" / "step-0000002"
    assert isinstance(caught.value, KeyboardInterrupt)  # library callers see a Ctrl-C
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    resumed = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "b", save_every=0
    )
    history = resumed.train(resume_from=latest_checkpoint(tmp_path / "b")).history
    assert [row["loss"] for row in history] == pytest.approx(expected[2:], rel=1e-6, abs=1e-7)


def test_second_ctrl_c_stops_at_once_without_a_checkpoint(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    trainer = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path, save_every=0
    )
    trainer.loss_fn = interrupt_at({2}, presses=2)
    with pytest.raises(KeyboardInterrupt) as caught:
        trainer.train()
    assert not isinstance(caught.value, TrainingInterrupted)
    assert trainer.step == 1  # step 2 never finished
    assert latest_checkpoint(tmp_path) is None


class EveryThirdStep(WrappedLoader):
    """A loader that can be checkpointed only every third batch (as an online recipe's, only
    between rollouts)."""

    @property
    def can_checkpoint(self):
        return self.loader.position % 3 == 0


def test_ctrl_c_waits_for_a_point_the_loader_can_resume_from(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    trainer = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path, save_every=0, max_steps=8
    )
    trainer.loader = EveryThirdStep(trainer.loader)
    trainer.loss_fn = interrupt_at({4})
    with pytest.raises(TrainingInterrupted) as caught:
        trainer.train()
    assert caught.value.step == 6
    assert [p.name for p in complete_checkpoints(tmp_path / "checkpoints")] == ["step-0000006"]


def test_a_sink_that_never_closes_does_not_hang_the_run(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path, monkeypatch, caplog
):
    import rlhf.engine.trainer as trainer_module

    release = threading.Event()

    class StuckSink:
        def log(self, step, metrics, prefix="train"):
            pass

        def close(self):
            release.wait()  # TensorBoard's writer waiting on a slow disk

    monkeypatch.setattr(trainer_module, "SINK_CLOSE_TIMEOUT_S", 0.5)
    trainer = make_trainer(fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path)
    opened = trainer._sinks
    monkeypatch.setattr(trainer, "_sinks", lambda resumed: [*opened(resumed), StuckSink()])
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=trainer.train()))
    try:
        with caplog.at_level(logging.WARNING, logger="rlhf"):
            runner.start()
            runner.join(120)
            assert not runner.is_alive(), "the run hung closing its metric sinks"
        assert outcome["result"].final_step == 6
        assert "StuckSink did not close within 0.5 s" in caplog.text
    finally:
        release.set()


# ---------------------------------------------------------------- damaged runs


def test_a_torn_metrics_line_is_dropped_naming_the_file(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "split": "train", "loss": 2.0}\n'
        '{"step": 2, "split": "train", "loss": 1.5}\n'
        '{"step": 3, "split": "tr',
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="rlhf"):
        JsonlSink(path, resume_step=2).close()
    assert f"{path}:3: not a JSON row" in caplog.text
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda folder: (folder / "trainable.safetensors").write_bytes(b"\0" * 40), id="torn weights"),
        pytest.param(lambda folder: (folder / "optimizer.pt").write_bytes(b"garbage"), id="garbage optimiser"),
        pytest.param(lambda folder: (folder / "trainer_state.json").write_text("{", encoding="utf-8"), id="torn state"),
    ],
)  # fmt: skip
def test_resume_falls_back_past_a_damaged_newest_checkpoint(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path, caplog, damage
):
    straight = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "a", save_every=2
    )
    expected = [row["loss"] for row in straight.train().history]
    first = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "b", save_every=2
    )
    first.callbacks.append(StopAt(5))  # a crash after step 5
    with pytest.raises(KeyboardInterrupt):
        first.train()
    newest = latest_checkpoint(tmp_path / "b")
    assert newest is not None and newest.name == "step-0000004"
    damage(newest)

    resumed = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path / "b", save_every=2
    )
    with caplog.at_level(logging.WARNING, logger="rlhf"):
        history = resumed.train(resume_from=newest).history
    assert f"{newest}/" in caplog.text  # the damaged file is named
    assert "resumed from the previous complete checkpoint" in caplog.text
    assert [row["loss"] for row in history] == pytest.approx(expected[2:], rel=1e-6, abs=1e-7)
    assert_finite_checkpoints(tmp_path / "b")


def test_no_resumable_checkpoint_names_every_damaged_file(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    trainer = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path, max_steps=2, save_every=1
    )
    trainer.train()
    for folder in complete_checkpoints(tmp_path / "checkpoints"):
        (folder / "rng.pt").write_bytes(b"")
    again = make_trainer(fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path)
    with pytest.raises(CheckpointDamaged) as caught:
        again.train(resume_from=latest_checkpoint(tmp_path))
    assert "step-0000002/rng.pt" in str(caught.value)
    assert "step-0000001/rng.pt" in str(caught.value)


def test_a_checkpoint_of_another_model_shape_names_the_parameter(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    from rlhf.models.tiny import make_tiny_model
    from tests.conftest import TINY_SIZES, sample_texts

    make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path, max_steps=1
    ).train()
    wider = make_tiny_model(
        tmp_path / "wider", sample_texts(), **(TINY_SIZES | {"intermediate_size": 96})
    )
    trainer = make_trainer(fresh_model(wider), examples, tiny_tokenizer, tmp_path, max_steps=2)
    with pytest.raises(ValueError, match=r"does not fit the model.*up_proj.weight has shape \[64, 32\] in the checkpoint but \[96, 32\]"):  # fmt: skip
        trainer.train(resume_from=latest_checkpoint(tmp_path))


# ---------------------------------------------------------------- configs


def sft_config(tmp_path, *overrides):
    from rlhf.config import load_config

    base = {
        "out": str(tmp_path / "run"),
        "model": {"path": "unused"},
        "data": {"train": "builtin:arithmetic?n=64"},
    }
    return load_config(SFTConfig, None, list(overrides), base=base)


def test_resume_refuses_changes_that_alter_the_run(tmp_path, caplog):
    from rlhf.recipes.common import record_config

    out = tmp_path / "run"
    out.mkdir()
    record_config(sft_config(tmp_path, "train.batch_size=8"), out, None)
    changed = sft_config(tmp_path, "train.batch_size=16", "train.seed=3", "train.log_every=5")
    with pytest.raises(ConfigError) as caught:
        record_config(changed, out, True)
    message = str(caught.value)
    assert "  train.batch_size: 8 -> 16\n" in message
    assert "  train.seed: 0 -> 3\n" in message
    assert "log_every" not in message  # harmless: not in the list that blocks
    assert "resume.allow_changes=true" in message
    assert read_yaml(out / "config.yaml")["train"]["batch_size"] == 8  # left as it was

    # harmless changes pass with a note
    with caplog.at_level(logging.INFO, logger="rlhf"):
        record_config(sft_config(tmp_path, "train.batch_size=8", "train.log_every=5"), out, True)
    assert "--resume: train.log_every 1 -> 5 (no effect on training)" in caplog.text
    # allowed: the new config is written and the old one kept
    allowed = sft_config(tmp_path, "train.batch_size=16", "resume.allow_changes=true")
    with caplog.at_level(logging.WARNING, logger="rlhf"):
        record_config(allowed, out, True)
    assert "no longer the one that was checkpointed" in caplog.text
    assert read_yaml(out / "config.yaml")["train"]["batch_size"] == 16
    assert read_yaml(out / "config.2.yaml")["train"]["log_every"] == 5
    assert read_yaml(out / "config.1.yaml")["train"]["log_every"] == 1


def test_a_duplicate_yaml_key_names_both_lines(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text(
        "train:\n  lr: 1.0e-3\nmodel:\n  path: x\ntrain:\n  batch_size: 4\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match=r"sft.yaml:5: .*duplicate key 'train' \(first at line 1\)"):  # fmt: skip
        read_yaml(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text("train:\n  lr: 1\n  seed: 2\n  lr: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"nested.yaml:4: .*duplicate key 'lr' \(first at line 2\)"):  # fmt: skip
        read_yaml(nested)
    merged = tmp_path / "merged.yaml"  # a YAML merge overridden by a key of its own is fine
    merged.write_text("base: &b\n  lr: 1\ntrain:\n  <<: *b\n  lr: 2\n", encoding="utf-8")
    assert read_yaml(merged)["train"] == {"lr": 2}


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("banana", "'banana' is not a device"),
        ("cuda", "no CUDA device is available here"),
        ("cuda:0", "no CUDA device is available here"),
    ],
)
def test_a_device_that_is_not_there_names_the_key(tmp_path, device, message):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=rf"train\.device: .*{message}"):
        sft_config(tmp_path, f"train.device={device}")


def test_out_naming_an_existing_file_names_the_key(tmp_path):
    (tmp_path / "taken").write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"out: .*is an existing file"):
        sft_config(tmp_path, f"out={tmp_path / 'taken'}")


def test_max_length_beyond_the_model_positions_names_both_numbers(tiny_model_dir):
    from rlhf.recipes.common import check_fits_positions

    model = fresh_model(tiny_model_dir)  # 256 positions
    check_fits_positions(model, 256)
    with pytest.raises(
        ConfigError, match=r"data.max_length=300 is longer than the model's 256 positions"
    ):
        check_fits_positions(model, 300)


def test_a_reward_device_that_is_not_there_names_the_key():
    from rlhf.config import load_config
    from rlhf.recipes.grpo import GRPOConfig

    overrides = ["data.prompts=p.jsonl", "model.path=m", "reward.rule=arithmetic"]
    with pytest.raises(ConfigError, match=r"reward\.device: .*'banana' is not a device"):
        load_config(GRPOConfig, None, [*overrides, "reward.device=banana"])


def test_a_run_is_extended_on_resume_only_under_a_constant_schedule(tmp_path):
    from rlhf.recipes.common import record_config

    out = tmp_path / "run"
    out.mkdir()
    for schedule, passes in (("constant", True), ("cosine", False)):
        record_config(sft_config(tmp_path, f"train.schedule={schedule}", "train.max_steps=10"), out, None)  # fmt: skip
        longer = sft_config(tmp_path, f"train.schedule={schedule}", "train.max_steps=20")
        if passes:
            record_config(longer, out, True)
        else:
            with pytest.raises(ConfigError, match=r"train\.max_steps: 10 -> 20"):
                record_config(longer, out, True)


def test_a_huge_row_trains_the_tiny_tokenizer_on_its_start_only():
    """The BPE trainer cost about 100 MB per MB of one huge row (a 50 MB row: 5.3 GB)."""
    from rlhf.data.records import ConversationRecord, Message, PreferenceRecord
    from rlhf.recipes.common import TOKENIZER_TEXT_CHARS, training_texts

    huge = "word " * 400_000
    records = [
        PreferenceRecord(huge, "yes", "no"),
        ConversationRecord((Message("user", huge), Message("assistant", "ok"))),
    ]
    texts = training_texts(records)
    assert texts == [huge[:TOKENIZER_TEXT_CHARS], "yes", "no", huge[:TOKENIZER_TEXT_CHARS], "ok"]


def test_a_broken_evaluation_names_the_step_it_evaluated(
    tiny_model_dir, tiny_tokenizer, examples, tmp_path
):
    trainer = make_trainer(
        fresh_model(tiny_model_dir), examples, tiny_tokenizer, tmp_path, eval_every=3
    )

    def evaluate(model):
        raise NonFiniteError("sampling: the model's next-token logits hold NaN or infinity")

    trainer.evaluate = evaluate
    with pytest.raises(TrainingDiverged, match=r"^step 3: sampling: .*no checkpoint was saved"):
        trainer.train()
