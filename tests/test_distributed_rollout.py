"""Rollout workers (Ray actors) and asynchronous rollouts: the remote engine samples what the
in-process engine samples, follows the trainer's weights with a verified sync, names a dead
worker; the rollout queue's staleness and its checkpoint; GRPO end to end with one-step
off-policy rollouts, resumed exactly."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import ray
import torch

from rlhf.distributed.rollout import RemoteEngine, RolloutWorker
from rlhf.distributed.workers import role_workers, set_role_workers, worker_call
from rlhf.online.experience import ExperienceBuffer
from rlhf.online.rollouts import RolloutQueue
from rlhf.rollout.types import EngineChoice, RolloutBatch, SamplingParams, WeightSyncError

from .online_helpers import PROMPTS, length_reward
from .ray_helpers import kill_and_wait

PARAMS = SamplingParams(max_new_tokens=8, temperature=1.0, num_samples=4, seed=5)


@pytest.fixture(scope="module")
def cluster():
    torch.set_num_threads(1)  # the trainer and each worker: one core each of two
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def start_worker(index: int = 0):
    return ray.remote(RolloutWorker).options(num_cpus=1).remote(threads=1, index=index)


@pytest.fixture(scope="module")
def worker(cluster):
    handle = start_worker()
    yield handle
    ray.get(handle.close.remote())


def load_policy(model_dir):
    from rlhf.models.load import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    return load_model(model_dir, tokenizer=tokenizer), tokenizer


def remote_engine(policy, tokenizer, workers, batch_size=64):
    return RemoteEngine(policy, tokenizer, workers, choice=EngineChoice(), batch_size=batch_size)


def local_rollout(policy, tokenizer, params=PARAMS, batch_size=64):
    from rlhf.rollout.hf import HFGenerationEngine

    return HFGenerationEngine(policy, tokenizer, batch_size=batch_size).generate(
        PROMPTS[:6], params
    )


def assert_same_samples(remote: RolloutBatch, local: RolloutBatch) -> None:
    assert torch.equal(remote.response_ids, local.response_ids)
    assert torch.equal(remote.response_mask, local.response_mask)
    assert torch.equal(remote.prompt_index, local.prompt_index)
    assert remote.response_texts == local.response_texts
    # the engine's sampling log-probs (the worker's copy) and the trainer's own, recomputed
    assert torch.allclose(remote.engine_logps, local.logps, atol=1e-5)
    assert torch.allclose(remote.logps, local.logps, atol=1e-5)


def take_a_step(policy) -> None:
    """One optimiser step that changes every weight a little."""
    optimizer = torch.optim.SGD(policy.parameters(), lr=1e-2)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    policy(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


# ------------------------------------------------------------------------------ the engine


def test_a_remote_rollout_is_the_in_process_engines(worker, tiny_model_dir):
    policy, tokenizer = load_policy(tiny_model_dir)
    engine = remote_engine(policy, tokenizer, [worker])
    remote = engine.generate(PROMPTS[:6], PARAMS)
    # one worker, the whole batch in one chunk, the call's own seed, the same batch size
    assert_same_samples(remote, local_rollout(policy, tokenizer))
    assert remote.engine_stats["sync_seconds"] >= 0  # the first rollout pushes the weights
    without = engine.generate(PROMPTS[:6], replace(PARAMS, return_logps=False))
    assert without.logps is None and without.engine_logps is not None
    assert "sync_seconds" not in without.engine_stats  # nothing changed: nothing pushed
    engine.close()


def test_the_workers_log_probs_as_old_log_probs(worker, tiny_model_dir):
    """mismatch.old_logps=engine: no trainer forward pass; the workers' sampling log-probs
    are the rollout's logps (the in-process engine's, to float rounding) and there is no
    separate engine_logps left to compare them with."""
    policy, tokenizer = load_policy(tiny_model_dir)
    engine = RemoteEngine(
        policy, tokenizer, [worker], choice=EngineChoice(), batch_size=64, recompute_logps=False
    )
    remote = engine.generate(PROMPTS[:6], PARAMS)
    local = local_rollout(policy, tokenizer)
    assert torch.equal(remote.response_ids, local.response_ids)
    assert remote.engine_logps is None
    torch.testing.assert_close(remote.logps, local.logps, atol=1e-5, rtol=1e-5)
    engine.close()


def test_weights_follow_an_optimizer_step_with_a_verified_sync(worker, tiny_model_dir):
    policy, tokenizer = load_policy(tiny_model_dir)
    engine = remote_engine(policy, tokenizer, [worker])
    before = engine.generate(PROMPTS[:6], PARAMS)
    take_a_step(policy)
    assert engine.version == 1
    after = engine.generate(PROMPTS[:6], PARAMS)
    assert "sync_seconds" in after.engine_stats
    assert_same_samples(after, local_rollout(policy, tokenizer))  # the updated weights sampled
    assert not torch.allclose(after.logps, before.logps)

    take_a_step(policy)
    handle = engine.submit(PROMPTS[:6], PARAMS)
    assert handle.version == 2 and handle.pushed
    index, ref = handle.push.receipts[0]
    receipt = ray.get(ref)
    name = next(iter(receipt))
    tampered = {**receipt, name: (receipt[name][0] + 1, receipt[name][1])}
    handle.push.receipts = [(index, ray.put(tampered))]
    with pytest.raises(WeightSyncError, match=f"rollout worker 0.*altered \\(first: {name}\\)"):
        engine.result(handle)
    engine.close()


def test_a_dead_worker_is_named(worker, tiny_model_dir):
    policy, tokenizer = load_policy(tiny_model_dir)
    doomed = start_worker(index=1)
    engine = remote_engine(policy, tokenizer, [worker, doomed])
    two = engine.generate(PROMPTS[:6], PARAMS)  # three prompts each, rows in prompt order
    assert torch.equal(two.prompt_index, torch.arange(6).repeat_interleave(4))
    kill_and_wait(doomed)
    with pytest.raises(RuntimeError, match="rollout worker 1 died"):
        engine.generate(PROMPTS[:6], PARAMS)
    engine.close()


def test_running_out_of_memory_on_a_worker_is_named(cluster):
    @ray.remote(num_cpus=0)
    def exhausted():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(RuntimeError, match="rollout worker 3 ran out of memory: CUDA out of"):
        worker_call("rollout worker", 3, exhausted.remote())


def test_the_registry_hands_the_launchers_workers_to_the_recipe(worker):
    set_role_workers("rollout", [worker])
    assert role_workers("rollout", 1) == [worker]
    with pytest.raises(ValueError, match=r"distributed\.rollout_workers=2, but 1 rollout workers"):
        role_workers("rollout", 2)
    set_role_workers("rollout", [])
    assert role_workers("rollout", 0) == []
    with pytest.raises(ValueError, match=r"distributed\.reward_workers=1, but 0 reward workers"):
        role_workers("reward", 1)


# ------------------------------------------------------------------------------ the queue


class VersionedEngine:
    """An async engine whose rollout records the policy version it was submitted with (the
    caller bumps ``version`` after each training iteration)."""

    def __init__(self):
        self.version, self.submitted = 0, []

    def submit(self, prompts, params):
        self.submitted.append(params.seed)
        return (params.seed, self.version)

    def finish(self, batch, params):  # the trainer's part: here, the rollout as collected
        assert batch.response_texts[0].startswith(f"{params.seed}@")
        return batch

    def collect(self, handle):
        seed, version = handle
        rows = torch.tensor([[seed, version]])
        return RolloutBatch(
            prompt_ids=rows,
            prompt_mask=torch.ones_like(rows),
            response_ids=rows + 1,
            response_mask=torch.ones_like(rows),
            logps=torch.tensor([[-0.1, -1 / 3]]),
            ended_with_eos=torch.tensor([True]),
            prompt_index=torch.tensor([0]),
            response_texts=[f"{seed}@{version}"],
            engine_logps=None,
            engine_stats={"generate_seconds": 0.5},
        )


def request(iteration):
    return ["a prompt"], SamplingParams(seed=iteration)


def train_through(queue, engine, iterations, start=1):
    taken = []
    for iteration in range(start, iterations + 1):
        taken.append(queue.take(iteration))
        engine.version += 1  # this rollout's update
    return taken


@pytest.mark.parametrize(
    ("staleness", "expected"), [(0, [0, 0, 0, 0]), (1, [0, 1, 1, 1]), (2, [0, 1, 2, 2])]
)
def test_queue_staleness(staleness, expected):
    engine = VersionedEngine()
    queue = RolloutQueue(engine, request, max_staleness=staleness, last=4)
    taken = train_through(queue, engine, 4)
    assert [t.staleness for t in taken] == expected
    # rollout i was sampled by the policy after i − 1 − staleness updates
    for iteration, t in enumerate(taken, start=1):
        assert t.batch.response_texts == [f"{iteration}@{iteration - 1 - t.staleness}"]
        assert t.metrics["rollout_staleness"] == t.staleness
    assert engine.submitted == [1, 2, 3, 4]  # each once, none past the last


def test_queue_checkpoint_keeps_the_rollouts_in_flight():
    straight_engine = VersionedEngine()
    straight = RolloutQueue(straight_engine, request, max_staleness=2, last=5)
    expected = train_through(straight, straight_engine, 5)

    engine = VersionedEngine()
    queue = RolloutQueue(engine, request, max_staleness=2, last=5)
    train_through(queue, engine, 2)
    state = json.loads(json.dumps(queue.state_dict()))  # as trainer_state.json holds it
    assert [saved["iteration"] for saved in state["rollouts"]] == [3, 4]

    resumed_engine = VersionedEngine()
    resumed_engine.version = 2  # the checkpoint's weights
    resumed = RolloutQueue(resumed_engine, request, max_staleness=2, last=5)
    resumed.load_state_dict(state)
    got = train_through(resumed, resumed_engine, 5, start=3)
    assert resumed_engine.submitted == [5]  # 3 and 4 came from the checkpoint
    for mine, theirs in zip(got, expected[2:], strict=True):
        assert mine.staleness == theirs.staleness
        for name, value in vars(theirs.batch).items():
            other = getattr(mine.batch, name)
            assert torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value


def test_a_rollout_batch_survives_json_bit_for_bit():
    batch = VersionedEngine().collect((3, 1))
    batch.engine_logps = torch.tensor([[-1e-8, -7.123456789]])
    back = RolloutBatch.from_state(json.loads(json.dumps(batch.to_state())))
    for name, value in vars(batch).items():
        other = getattr(back, name)
        if isinstance(value, torch.Tensor):
            assert other.dtype == value.dtype and torch.equal(other, value)
        else:
            assert other == value


# ------------------------------------------------------------------------------ end to end


def grpo_config(tmp_path, model_dir, name):
    from rlhf.config import load_config, preset_path
    from rlhf.recipes.grpo import GRPOConfig

    overrides = [
        f"out={tmp_path / name}",
        "overwrite=true",
        "progress=false",
        "tensorboard=false",
        "model.tiny=null",
        f"model.path={model_dir}",
        "init_sft=null",
        "rollout.iterations=6",
        "train.save_every=6",  # steps: every 3 iterations of 2 steps
        "eval.prompts=0",
        "distributed.rollout_workers=1",
        "distributed.max_staleness=1",
        "mismatch.correction=truncated_is",
    ]
    return load_config(GRPOConfig, preset_path("grpo", "tiny"), overrides)


def train_rows(folder):
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["split"] == "train"]


def test_grpo_with_one_step_off_policy_rollouts_resumes_exactly(
    worker, tmp_path, tiny_model_dir, monkeypatch
):
    from rlhf.recipes.grpo import run_grpo

    monkeypatch.setattr(
        "rlhf.recipes.online_common.build_reward",
        lambda spec: lambda prompts, responses, metadata=None: length_reward(prompts, responses),
    )
    set_role_workers("rollout", [worker])
    try:
        straight = run_grpo(grpo_config(tmp_path, tiny_model_dir, "a"))
        assert straight.final_step == 12
        rows = train_rows(tmp_path / "a")
        staleness = [row["rollout_staleness"] for row in rows if "rollout_staleness" in row]
        assert staleness == [0, 1, 1, 1, 1, 1]
        first = next(row for row in rows if "rollout_staleness" in row)
        # the first rollout was sampled by the trainer's own weights: no mismatch
        assert abs(first["rollout_mismatch_kl"]) < 1e-6
        later = [row["rollout_mismatch_kl"] for row in rows if "rollout_mismatch_kl" in row]
        assert max(later[1:]) > 1e-6  # an update behind: the correction has work to do

        config = grpo_config(tmp_path, tiny_model_dir, "b")
        calls = {"n": 0}
        original = ExperienceBuffer._next_rollout

        def dies_in_the_fourth(self):
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
            original(self)

        monkeypatch.setattr(ExperienceBuffer, "_next_rollout", dies_in_the_fourth)
        with pytest.raises(KeyboardInterrupt):
            run_grpo(config)
        monkeypatch.setattr(ExperienceBuffer, "_next_rollout", original)
        checkpoints = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
        assert checkpoints[-1] == "step-0000006"
        # rollout 4, sampled by the weights of step 4, travels with the checkpoint of step 6
        state = json.loads(
            (tmp_path / "b" / "checkpoints" / checkpoints[-1] / "trainer_state.json").read_text()
        )
        assert [r["iteration"] for r in state["loader"]["rollouts"]["rollouts"]] == [4]
        resumed = run_grpo(config, resume=True)
    finally:
        set_role_workers("rollout", [])
    assert resumed.final_step == straight.final_step
    expected = [row["loss"] for row in straight.metrics if "loss" in row][6:]
    got = [row["loss"] for row in resumed.metrics if "loss" in row]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    resumed_rows = train_rows(tmp_path / "b")
    assert [row["rollout_staleness"] for row in resumed_rows if "rollout_staleness" in row][
        -3:
    ] == [1, 1, 1]
