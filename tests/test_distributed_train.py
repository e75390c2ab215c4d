"""Data-parallel training on Ray with FSDP2 (rlhf.distributed): the same losses at any number
of ranks, sharded checkpoints that resume on another number of ranks, and a killed rank that
stops the run with one message and resumes exactly.

Every run here is real: a local Ray cluster, training ranks in their own processes (one
thread each), gloo collectives, torch.distributed.checkpoint files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from rlhf.config import apply_overrides, read_yaml
from rlhf.distributed.launch import RankFailed, WorkerFailed, describe_failure
from rlhf.recipes.registry import recipe

from .ray_helpers import kill_and_wait

# few steps of the tiny presets on small data: the comparisons need steps, not learning
SMALL = {
    "sft": ["data.train=builtin:arithmetic?n=400"],
    "rm": ["data.train=builtin:arithmetic-preferences?n=400"],
    "dpo": ["data.train=builtin:arithmetic-preferences?n=400", "eval.kl_prompts=4"],
    "kto": ["data.train=builtin:arithmetic-binary?n=400", "eval.kl_prompts=4"],
}
COMMON = ["progress=false", "tensorboard=false", "train.eval_every=0"]


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (the launcher reuses a connected one)."""
    torch.set_num_threads(1)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def config_for(name: str, out: Path, *overrides: str):
    entry = recipe(name)
    raw = read_yaml(entry.preset_file("tiny"))
    raw = apply_overrides(raw, [f"out={out}", *COMMON, *SMALL[name], *overrides])
    return entry.config_class().model_validate(raw)


def losses(out: Path) -> dict[int, float]:
    """step -> training loss, from metrics.jsonl (a resumed run's rows replace earlier ones)."""
    found = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row and row.get("step", 0) > 0 and not any(k.startswith("eval_") for k in row):
            found[row["step"]] = row["loss"]
    return found


def run(name: str, out: Path, *overrides: str, resume: bool = False):
    return recipe(name).start(config_for(name, out, *overrides), resume)


@pytest.mark.parametrize("name", ["sft", "rm", "dpo", "kto"])
def test_two_ranks_give_the_single_process_losses(cluster, tmp_path, name):
    """Global batch B over 2 ranks = one process at batch B: the loss is normalised by the
    units (tokens, pairs, examples) of every rank together, KTO's z_ref too."""
    steps = ["train.max_steps=4", "train.save_every=0"]
    run(name, tmp_path / "one", *steps)
    run(name, tmp_path / "two", *steps, "distributed.train_workers=2")
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5), step
    # the exported model is the same whole model, readable by plain transformers
    from safetensors.torch import load_file

    whole = load_file(tmp_path / "one" / "model" / "model.safetensors")
    gathered = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert whole.keys() == gathered.keys()
    for key, tensor in whole.items():
        torch.testing.assert_close(gathered[key], tensor, atol=1e-4, rtol=1e-4)


def test_sharded_checkpoint_resumes_on_one_and_two_ranks(cluster, tmp_path):
    """A checkpoint of 2 ranks (torch.distributed.checkpoint shards) resumed by one process
    and by 2 ranks continues exactly as the uninterrupted run."""
    steps = ["train.max_steps=6", "train.save_every=3", "train.keep_checkpoints=3"]
    full = tmp_path / "full"
    run("sft", full, *steps, "distributed.train_workers=2")
    sharded = full / "checkpoints" / "step-0000003"
    assert (sharded / "sharded").is_dir() and not (sharded / "trainable.safetensors").exists()
    expected = losses(full)
    for ranks in (1, 2):
        again = tmp_path / f"resumed-{ranks}"
        shutil.copytree(full, again, ignore=shutil.ignore_patterns("step-0000006"))
        shutil.rmtree(again / "model")
        (again / "metrics.jsonl").write_text(
            "".join(
                line + "\n"
                for line in (full / "metrics.jsonl").read_text().splitlines()
                if json.loads(line).get("step", 0) <= 3
            )
        )
        run("sft", again, *steps, f"distributed.train_workers={ranks}", resume=True)
        resumed = losses(again)
        for step in (4, 5, 6):
            assert resumed[step] == pytest.approx(expected[step], abs=1e-5), (ranks, step)


def test_single_process_checkpoint_resumes_on_two_ranks(cluster, tmp_path):
    """The other way: a one-process checkpoint (whole tensors, AdamW keyed by position) read
    into FSDP2 shards."""
    steps = ["train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=2"]
    full = tmp_path / "full"
    run("sft", full, *steps)
    again = tmp_path / "again"
    shutil.copytree(full, again, ignore=shutil.ignore_patterns("step-0000004"))
    shutil.rmtree(again / "model")
    run("sft", again, *steps, "distributed.train_workers=2", resume=True)
    for step in (3, 4):
        assert losses(again)[step] == pytest.approx(losses(full)[step], abs=1e-5)


def test_killed_rank_stops_the_run_and_resume_continues_exactly(cluster, tmp_path):
    """SIGKILL one training rank mid-run: the command stops with one line naming the rank;
    ``--resume`` from the last checkpoint gives the uninterrupted run's later losses."""
    steps = ["train.max_steps=40", "train.save_every=5", "train.keep_checkpoints=20"]
    two = ["distributed.train_workers=2", f"distributed.address={cluster}"]
    uninterrupted = tmp_path / "uninterrupted"
    run("sft", uninterrupted, *steps, "distributed.train_workers=2")

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "rlhf.cli", "sft", "--preset", "tiny", f"out={out}"]
    command += [*COMMON, *SMALL["sft"], *steps, *two]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    killed = False
    while process.poll() is None and time.monotonic() < deadline:
        # the driver logs each rank's process: "training rank 1: pid N on node ..."
        pids = [re.search(r"training rank 1: pid (\d+)", line) for line in list(lines)]
        pid = next((int(found.group(1)) for found in pids if found), None)
        if pid and (out / "checkpoints" / "step-0000005" / "trainer_state.json").exists():
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    process.wait(timeout=120)
    reader.join(timeout=10)
    output = "".join(lines)
    assert killed, output
    assert process.returncode != 0, output
    assert "training rank 1 died" in output, output
    last = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-???????"))
    assert last < 40

    resumed = subprocess.run(
        [*command, "--resume"], capture_output=True, text=True, env=env, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    expected, got = losses(uninterrupted), losses(out)
    for step in range(last + 1, 41):
        assert got[step] == pytest.approx(expected[step], abs=1e-5), step


def test_reward_workers_score_as_the_reward_in_this_process(cluster):
    """Rows split over two reward workers give the local reward's scores and components; a
    dead worker is named."""
    from rlhf.distributed.reward import RemoteReward, RewardWorker
    from rlhf.rewards.base import score_reward
    from rlhf.rewards.spec import RewardSpec, build_reward

    spec = RewardSpec(rule="arithmetic", length_penalty=0.05)  # a composite: two components
    prompts = [f"What is {a} + {b}?" for a, b in [(1, 2), (30, 4), (5, 16), (7, 7), (12, 9)]]
    responses = ["3", "34", "20", "14 or so", "21"]
    workers = [
        ray.remote(RewardWorker).options(num_cpus=0).remote(threads=1, index=i) for i in range(2)
    ]
    metadata = [{"response_tokens": len(response)} for response in responses]
    remote = RemoteReward(spec.model_dump(mode="json"), workers)
    local = score_reward(build_reward(spec), prompts, responses, metadata)
    got = remote.score(prompts, responses, metadata)
    torch.testing.assert_close(got.scores, local.scores)
    assert got.components.keys() == local.components.keys() and len(local.components) == 2
    for name, values in local.components.items():
        torch.testing.assert_close(got.components[name], values)
    kill_and_wait(workers[1])
    with pytest.raises(RuntimeError, match="reward worker 1 died"):
        remote.score(prompts, responses, metadata)


def test_reference_workers_give_the_local_reference_log_probs(cluster, tiny_model_dir):
    """π_ref on two reference workers (the initial policy's files sent to them, a prompt's
    samples kept on one worker) gives the in-process frozen copy's log-probs."""
    from rlhf.distributed.reference import ReferenceWorker, RemoteReference
    from rlhf.distributed.workers import model_files
    from rlhf.models.load import load_model, load_tokenizer
    from rlhf.models.reference import ReferenceModel
    from rlhf.rollout.hf import HFGenerationEngine
    from rlhf.rollout.measure import reference_logps
    from rlhf.rollout.types import SamplingParams

    from .online_helpers import PROMPTS

    tokenizer = load_tokenizer(tiny_model_dir)
    policy = load_model(tiny_model_dir, tokenizer=tokenizer)
    params = SamplingParams(max_new_tokens=8, num_samples=3, seed=2, return_logps=True)
    batch = HFGenerationEngine(policy, tokenizer, batch_size=64).generate(PROMPTS[:5], params)
    workers = [
        ray.remote(ReferenceWorker).options(num_cpus=0).remote(threads=1, index=i) for i in range(2)
    ]
    remote = RemoteReference(
        workers,
        path=None,
        files=model_files(policy, tokenizer),
        dtype="float32",
        attn_implementation="sdpa",
        cwd=os.getcwd(),
    )
    local = reference_logps(ReferenceModel.frozen(policy), batch, 1.0, 4)
    torch.testing.assert_close(reference_logps(remote, batch, 1.0, 4), local)
    kill_and_wait(workers[0])
    with pytest.raises(RuntimeError, match="reference worker 0 died"):
        reference_logps(remote, batch, 1.0, 4)


def test_grpo_with_every_role_on_its_own_worker(cluster, tmp_path):
    """Rollout, reward and reference workers beside the training rank: the launcher starts
    them and hands them to the recipe."""
    overrides = [
        f"out={tmp_path}",
        *COMMON,
        "init_sft.train.max_steps=10",
        "rollout.iterations=3",
        "distributed.rollout_workers=1",
        "distributed.reward_workers=1",
        "distributed.reference_workers=1",
        "distributed.max_staleness=1",
    ]
    entry = recipe("grpo")
    raw = apply_overrides(read_yaml(entry.preset_file("tiny")), overrides)
    result = entry.start(entry.config_class().model_validate(raw), False)
    assert (result.model_dir / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["rollout_staleness"] for r in rows if "rollout_staleness" in r] == [0, 1, 1]
    assert all(0 <= r["rollout_reward"] <= 1 for r in rows if "rollout_reward" in r)


def test_online_dpo_on_two_ranks_where_a_rank_has_no_pair(cluster, tmp_path):
    """Online DPO on two training ranks: some micro-batches give a rank only tied pairs, so
    nothing of its share enters the loss; it still runs the forward and backward FSDP2's
    collectives need, and the ranks' metrics (one rank without the loss's) still combine.
    Before, the ranks hung in the collectives or gloo aborted."""
    overrides = [
        f"out={tmp_path}",
        *COMMON,
        "init_sft.train.max_steps=20",
        "rollout.iterations=3",
        "distributed.rollout_workers=1",
        "distributed.train_workers=2",
    ]
    entry = recipe("online-dpo")
    raw = apply_overrides(read_yaml(entry.preset_file("tiny")), overrides)
    result = entry.start(entry.config_class().model_validate(raw), False)
    assert result.final_step == 3 and (result.model_dir / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    pairs = [r["rollout_pairs"] for r in rows if "rollout_pairs" in r]
    assert len(pairs) == 3 and min(pairs) < 16  # tied groups left out: ranks had fewer pairs


def test_unplaceable_workers_are_refused_with_the_resources(cluster, tmp_path):
    with pytest.raises(WorkerFailed, match="could not place 8 workers"):
        run(
            "sft",
            tmp_path / "big",
            "train.max_steps=1",
            "distributed.train_workers=8",
            "distributed.start_timeout_s=2",
        )


def test_failures_name_the_role():
    oom = RankFailed("OutOfMemoryError: x", out_of_memory=True)
    oom = ray.exceptions.RayTaskError("run", "traceback", oom)
    assert "training rank 1 ran out of memory" in describe_failure("training rank 1", oom)
    plain = RankFailed("ValueError: bad row", out_of_memory=False)
    plain = ray.exceptions.RayTaskError("run", "tb", plain)
    assert (
        describe_failure("training rank 0", plain) == "training rank 0 failed: ValueError: bad row"
    )


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("sft", ["distributed.rollout_workers=1"], "does not sample from the policy"),
        ("dpo", ["distributed.reward_workers=1"], "does not sample from the policy"),
        ("grpo", ["distributed.train_workers=2"], "set distributed.rollout_workers"),
        ("grpo", ["distributed.max_staleness=1"], "set distributed.rollout_workers"),
        ("grpo", ["mismatch.old_logps=engine"], "only rollout workers"),
        (
            "grpo",
            [
                "distributed.rollout_workers=1",
                "mismatch.old_logps=engine",
                "mismatch.correction=truncated_is",
            ],
            "no gap to correct",
        ),
        (
            "dapo",
            ["distributed.rollout_workers=1", "distributed.max_staleness=1"],
            "cannot be sampled ahead",
        ),
        ("sft", ["distributed.train_workers=2", "model.lora.r=4"], "LoRA adapters"),
    ],
)
def test_bad_distributed_settings_fail_at_load_naming_the_key(tmp_path, name, overrides, message):
    from pydantic import ValidationError

    entry = recipe(name)
    raw = apply_overrides(read_yaml(entry.preset_file("tiny")), [f"out={tmp_path}", *overrides])
    with pytest.raises(ValidationError, match=message):
        entry.config_class().model_validate(raw)
