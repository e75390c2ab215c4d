"""`rlhf raft`, `rlhf sample` and `rlhf best-of-n` through the real command line."""

from __future__ import annotations

import itertools
import json

import pytest
from typer.testing import CliRunner

from rlhf.cli import app
from rlhf.rollout import read_candidates

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


def metric_rows(folder, split):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["split"] == split]


@pytest.fixture(scope="module")
def raft_run(tmp_path_factory):
    """The tiny RAFT preset, run once: its model is the policy the other commands sample."""
    out = tmp_path_factory.mktemp("raft") / "run"
    result = invoke("raft", "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_raft_tiny_preset_completes_and_the_reward_does_not_drop(raft_run):
    out, output = raft_run
    assert (out / "model" / "model.safetensors").exists()
    assert "held-out: reward_mean" in output
    evals = metric_rows(out, "eval")
    assert [row["step"] for row in evals] == [0, 1, 2, 3]
    rewards = [row["reward_mean"] for row in evals]
    assert rewards[-1] >= rewards[0], rewards
    rollouts = metric_rows(out, "rollout")
    assert len(rollouts) == 3 and all(row["kept"] > 0 for row in rollouts)
    assert all(row["kept_reward_mean"] == 1.0 for row in rollouts)  # min_reward keeps correct only
    selected = (out / "rounds" / "round-1" / "selected.jsonl").read_text().splitlines()
    assert len(selected) == rollouts[0]["kept"]
    assert (out / "rounds" / "round-3" / "model" / "config.json").exists()


def test_raft_refuses_to_clobber_and_resumes_a_finished_run(raft_run):
    out, _ = raft_run
    again = invoke("raft", "--preset", "tiny", f"out={out}")
    assert again.exit_code == 1 and "--resume" in again.output
    resumed = invoke(
        "raft", "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false", "--resume"
    )
    assert resumed.exit_code == 0, resumed.output
    assert [row["step"] for row in metric_rows(out, "eval")] == [0, 1, 2, 3]


def test_raft_help_lists_its_keys():
    result = invoke("raft", "--help")
    assert result.exit_code == 0
    for key in ("raft.num_samples", "raft.keep_top", "reward.rule", "sampling.temperature"):
        assert key in result.output


def test_sample_writes_candidates(raft_run, tmp_path):
    out, _ = raft_run
    output = tmp_path / "candidates.jsonl"
    result = invoke(
        "sample", "--model", out / "model", "--prompts", "builtin:arithmetic?n=6",
        "--num-samples", 3, "--max-new-tokens", 12, "--temperature", 0.7, "--seed", 1,
        "--output", output, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "18 responses to 6 prompts" in result.output
    candidates = read_candidates(output)
    assert len(candidates) == 6
    assert all(len(c.responses) == len(c.finished) == len(c.logps) == 3 for c in candidates)
    assert all(logp <= 0 for c in candidates for logp in c.logps)
    first = json.loads(output.read_text().splitlines()[0])
    assert set(first) == {"prompt", "responses", "finished", "logps"}
    # the same seed gives the same file
    again = tmp_path / "again.jsonl"
    invoke(
        "sample", "--model", out / "model", "--prompts", "builtin:arithmetic?n=6",
        "-k", 3, "--max-new-tokens", 12, "--temperature", 0.7, "--seed", 1, "-o", again,
        "--no-progress",
    )  # fmt: skip
    assert again.read_text() == output.read_text()


def test_sample_with_a_reward_keeps_the_best(raft_run, tmp_path):
    out, _ = raft_run
    output = tmp_path / "best.jsonl"
    result = invoke(
        "sample", "-m", out / "model", "--prompts", "builtin:arithmetic?n=5", "-k", 6,
        "--max-new-tokens", 12, "--reward", "rule=arithmetic", "--keep-top", 2, "-o", output,
        "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "mean reward" in result.output
    for candidate in read_candidates(output):
        assert len(candidate.responses) == 2
        rewards = candidate.extra["rewards"]
        assert rewards == sorted(rewards, reverse=True)


def test_best_of_n_reports_reward_against_kl(raft_run, tmp_path):
    out, _ = raft_run
    report = tmp_path / "bon"
    result = invoke(
        "best-of-n", "-m", out / "model", "--prompts", "builtin:arithmetic?n=24",
        "--reward", "rule=arithmetic", "--gold", "rule=arithmetic", "--max-n", 8,
        "--max-new-tokens", 12, "--temperature", 0.7, "--out", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "KL (nats)" in result.output
    rows = [json.loads(line) for line in (report / "best_of_n.jsonl").read_text().splitlines()]
    assert [row["n"] for row in rows] == [1, 2, 4, 8]
    assert all(a["reward"] <= b["reward"] for a, b in itertools.pairwise(rows))
    assert rows[-1]["reward"] > rows[0]["reward"]
    assert (report / "best_of_n.csv").exists() and (report / "samples.jsonl").exists()


def test_sampling_commands_fail_with_clear_messages(tiny_model_dir, tmp_path):
    common = ["-m", tiny_model_dir, "-o", tmp_path / "x.jsonl", "--no-progress"]
    missing = invoke("sample", "--prompts", tmp_path / "nope.jsonl", *common)
    assert missing.exit_code == 1 and "nope.jsonl" in missing.output
    assert "Traceback" not in missing.output
    no_reward = invoke("sample", "--prompts", "builtin:arithmetic?n=2", "--keep-top", 1, *common)
    assert no_reward.exit_code == 1 and "--keep-top needs --reward" in no_reward.output
    bad_rule = invoke(
        "best-of-n", "-m", tiny_model_dir, "--prompts", "builtin:arithmetic?n=2",
        "--reward", "rule=nope", "--out", tmp_path / "bon",
    )  # fmt: skip
    assert bad_rule.exit_code == 2 and "unknown rule 'nope'" in bad_rule.output
    too_many = invoke("sample", "--prompts", "builtin:arithmetic?n=2", "-k", 65, *common)
    assert too_many.exit_code == 2


def test_raft_resume_redoes_an_interrupted_round(raft_run, tmp_path):
    import shutil

    source, _ = raft_run
    out = tmp_path / "copy"
    shutil.copytree(source, out)
    # as if the run had died during round 3: state says 2 rounds are done
    state = json.loads((out / "raft_state.json").read_text())
    state |= {"completed_rounds": 2, "policy": str(out / "rounds" / "round-2" / "model")}
    (out / "raft_state.json").write_text(json.dumps(state))
    shutil.rmtree(out / "rounds" / "round-3" / "model")
    result = invoke(
        "raft", "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false", "--resume"
    )
    assert result.exit_code == 0, result.output
    assert [row["step"] for row in metric_rows(out, "rollout")] == [1, 2, 3]
    assert [row["step"] for row in metric_rows(out, "eval")] == [0, 1, 2, 3]
    assert (out / "rounds" / "round-3" / "model" / "config.json").exists()
    # seeded sampling: the redone round drew the same samples as the original
    redone = (out / "rounds" / "round-3" / "selected.jsonl").read_text()
    assert redone == (source / "rounds" / "round-3" / "selected.jsonl").read_text()


def test_sample_and_best_of_n_pass_each_prompts_answer_to_the_reward(raft_run, tmp_path):
    """rule=gsm8k checks the response against the row's `answer`: right answers earn reward,
    deliberately wrong ones never do, and without --answer-field the command says so."""
    from rlhf.rewards.rules import arithmetic_answer
    from rlhf.sim.builtin import arithmetic

    out, _ = raft_run
    prompts = [record.prompt for record in arithmetic(12, seed=3)]
    mean_reward = {}
    for name, shift in (("right", 0), ("wrong", 1000)):
        source = tmp_path / f"{name}.jsonl"
        rows = [{"prompt": p, "answer": f"#### {arithmetic_answer(p) + shift}"} for p in prompts]
        source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        output = tmp_path / f"{name}-candidates.jsonl"
        result = invoke(
            "sample", "-m", out / "model", "--prompts", source, "-k", 4, "--max-new-tokens", 12,
            "--reward", "rule=gsm8k", "--answer-field", "answer", "-o", output, "--no-progress",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        rewards = [r for c in read_candidates(output) for r in c.extra["rewards"]]
        mean_reward[name] = sum(rewards) / len(rewards)
    assert mean_reward["wrong"] == 0 < mean_reward["right"]

    report = tmp_path / "bon"
    result = invoke(
        "best-of-n", "-m", out / "model", "--prompts", tmp_path / "right.jsonl",
        "--reward", "rule=arithmetic", "--gold", "rule=gsm8k", "--answer-field", "answer",
        "--max-n", 4, "--max-new-tokens", 12, "--out", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (report / "best_of_n.jsonl").read_text().splitlines()]
    assert rows[-1]["gold"] > 0

    without = invoke(
        "sample", "-m", out / "model", "--prompts", tmp_path / "right.jsonl",
        "--reward", "rule=gsm8k", "-o", tmp_path / "x.jsonl", "--no-progress",
    )  # fmt: skip
    assert without.exit_code == 1 and "answer" in without.output
    missing = invoke(
        "sample", "-m", out / "model", "--prompts", "builtin:arithmetic?n=2", "--reward",
        "rule=gsm8k", "--answer-field", "answer", "-o", tmp_path / "y.jsonl", "--no-progress",
    )  # fmt: skip
    assert missing.exit_code == 1 and "--answer-field 'answer'" in missing.output
