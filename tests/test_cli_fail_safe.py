"""Failing safely through the real command line: a diverging run of every kind of recipe stops
naming the step and writes no non-finite checkpoint or model; Ctrl-C saves; --resume refuses
a changed config (tests/test_fail_safe.py tests the engine underneath)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from rlhf.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "extra"),
    [
        # SFT's tiny model can survive lr=1e6 on some CPUs (its weights saturate to a uniform
        # next-token distribution, all finite): 1e30 overflows fp32 activations on any of them
        ("sft", ["train.warmup_steps=0", "train.lr=1e30"]),
        ("rm", []),
        ("dpo", []),
        ("grpo", []),
        ("ppo", []),
    ],
)
def test_a_diverging_run_stops_before_anything_non_finite_reaches_disk(tmp_path, recipe, extra):
    """lr=1e6 makes the first update huge: the next step's gradient (or its rollout) is NaN
    while the loss can still be finite. Before, the run saved an all-NaN checkpoint and called
    it good, exported an all-NaN model, or (grpo, ppo) died in torch.multinomial."""
    out = tmp_path / recipe
    result = invoke(
        recipe, "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false",
        "train.lr=1e6", "train.save_every=1", *extra,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    message = errors[0]
    assert message.startswith("error: step "), message
    assert "NaN" in message or "nan" in message
    assert "checkpoint" in message
    # stopped before the bad update (or before sampling from what it made), not a step later
    assert "the update was not applied" in message or "sampling" in message, message
    assert not (out / "model").exists()
    for folder in (out / "checkpoints").glob("step-*"):
        for file in [folder / "trainable.safetensors", *folder.glob("model/*.safetensors")]:
            for name, tensor in load_file(file).items():
                assert torch.isfinite(tensor).all(), f"{file}: {name}"


def rlhf_process(*args: str) -> subprocess.Popen:
    environment = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", "from rlhf.cli import app; app()", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )


def wait_for_rows(path, rows, process, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended early:\n{process.stdout.read()}")
        if path.exists() and len(path.read_text(encoding="utf-8").splitlines()) >= rows:
            return
        time.sleep(0.05)
    process.kill()
    pytest.fail("the run wrote no metrics in time")


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_that_resumes(tmp_path):
    out = tmp_path / "sft"
    args = ["sft", "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false"]
    args += ["train.max_steps=400", "train.save_every=0", "train.eval_every=0"]
    process = rlhf_process(*args)
    wait_for_rows(out / "metrics.jsonl", 3, process)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 130, output
    line = next(line for line in output.splitlines() if line.startswith("interrupted"))
    step = int(line.split("after step ")[1].split(":")[0])
    checkpoint = out / "checkpoints" / f"step-{step:07d}"
    assert f"checkpoint saved to {checkpoint}" in line
    assert "--resume" in line
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == step < 400

    result = invoke(*args, "--resume", "train.max_steps=400")
    assert result.exit_code == 0, result.output
    assert "done: 400 steps" in result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if row["split"] == "train"] == list(range(1, 401))


@pytest.mark.slow
def test_ctrl_c_before_any_checkpoint_says_there_is_nothing_to_resume(tmp_path):
    """Before, this printed "resume with --resume from the last checkpoint", and --resume then
    failed: there was none."""
    out = tmp_path / "sft"
    process = rlhf_process(
        "sft", "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false"
    )
    deadline = time.monotonic() + 120
    while not (out / "config.yaml").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)  # while it builds the model: training has not started
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 130, output
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert last == (
        "interrupted without saving; no checkpoint was saved, so --resume has nothing to "
        "continue from"
    ), output
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
def test_resume_refuses_a_changed_batch_size_and_a_changed_model(tmp_path):
    out = tmp_path / "sft"
    args = ["sft", "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false"]
    args += ["train.max_steps=3", "train.save_every=1", "train.eval_every=0"]
    assert invoke(*args).exit_code == 0
    before = (out / "config.yaml").read_text()

    result = invoke(*args, "--resume", "train.batch_size=16", "model.tiny.hidden_size=64")
    assert result.exit_code == 2, result.output
    output = result.output
    assert "train.batch_size: 32 -> 16" in output and "model.tiny.hidden_size: 128 -> 64" in output
    assert "resume.allow_changes=true" in output
    assert (out / "config.yaml").read_text() == before

    # allowed, the model change still cannot load the checkpoint: a clear error, no traceback
    result = invoke(*args, "--resume", "model.tiny.hidden_size=64", "resume.allow_changes=true")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "the checkpoint does not fit the model" in errors[0] and "has shape" in errors[0]

    # a harmless change passes
    result = invoke(*args, "--resume", "train.log_every=2")
    assert result.exit_code == 0, result.output
    assert "done: 3 steps" in result.output
