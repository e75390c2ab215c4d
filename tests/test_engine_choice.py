"""Every command and config section that samples takes the generation engine by config:
``--engine`` / ``--vllm KEY=VALUE`` on the sampling commands, ``eval.engine`` / ``eval.vllm.*``
and ``feedback.engine`` in the evaluation and pipeline sections, ``sampling.engine`` in RAFT;
each builds it through the factory and closes it when done. No vLLM needed: a recording engine
(HF generate underneath) stands in for the chosen kind."""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from rlhf.cli import app
from rlhf.config import ConfigError, load_config, preset_path, read_yaml
from rlhf.rollout import factory
from rlhf.rollout.hf import HFGenerationEngine
from rlhf.rollout.vllm_config import VLLMConfig

runner = CliRunner()
PROMPTS = "builtin:arithmetic?n=3"


class RecordingEngine(HFGenerationEngine):
    """Samples with HF generate and records what it was built with, served and whether it was
    closed (the vLLM engine's close stops its process)."""

    events: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, model, tokenizer, *, batch_size=64, options=None):
        super().__init__(model, tokenizer, batch_size=batch_size)
        self.options = options
        self.events.append(("built", batch_size))

    @classmethod
    def from_pretrained(cls, path, *, options=None, **kwargs):
        engine = super().from_pretrained(path, **kwargs)
        engine.options = options
        return engine

    def generate(self, prompts, params):
        self.events.append(("generate", len(prompts)))
        return super().generate(prompts, params)

    def close(self):
        self.events.append(("closed", self.options))


class BrokenEngine(RecordingEngine):
    def generate(self, prompts, params):
        raise RuntimeError("the engine broke")


def kinds(events):
    return [kind for kind, _ in events]


@pytest.fixture
def recording(monkeypatch):
    """RecordingEngine registered as ``recording`` (for config sections)."""
    monkeypatch.setitem(factory.ENGINES, "recording", f"{__name__}:RecordingEngine")
    RecordingEngine.events = []
    return RecordingEngine.events


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


# ------------------------------------------------------------------------------ configs


def dpo_config(tmp_path, model_dir, *overrides):
    from rlhf.recipes.dpo import DPOConfig

    base = {
        "out": str(tmp_path / "dpo"),
        "progress": False,
        "tensorboard": False,
        "model": {"path": str(model_dir)},
        "reference": {"cache_dir": str(tmp_path / "cache")},
        "data": {
            "train": "builtin:arithmetic-preferences?n=16",
            "eval_fraction": 0.25,
            "max_length": 48,
        },
        "train": {"max_steps": 1, "batch_size": 4, "warmup_steps": 0},
        "eval": {"kl_prompts": 2, "kl_samples_per_prompt": 1, "max_new_tokens": 4},
    }
    return load_config(DPOConfig, None, list(overrides), base=base)


def pipeline_config(*overrides):
    from rlhf.recipes.pipeline import PipelineConfig

    base = read_yaml(preset_path("pipeline", "tiny"))
    return load_config(PipelineConfig, None, list(overrides), base=base)


def test_evaluation_and_feedback_sections_choose_the_engine(tmp_path):
    dpo = dpo_config(tmp_path, "m", "eval.engine=vllm", "eval.vllm.placement=trainer")
    assert dpo.eval.engine == "vllm" and dpo.eval.vllm.placement == "trainer"
    assert dpo_config(tmp_path, "m").eval.engine == "hf"
    pipeline = pipeline_config(
        "feedback.engine=vllm", "feedback.vllm.dtype=bfloat16", "eval.engine=vllm"
    )
    assert (pipeline.feedback.engine, pipeline.feedback.vllm.dtype) == ("vllm", "bfloat16")
    assert pipeline.eval.engine == "vllm" and pipeline.eval.vllm == VLLMConfig()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("eval.engine=nope", "eval.engine: Value error, unknown engine 'nope'"),
        ("eval.vllm.placement=gpu", "eval.vllm.placement: Input should be 'process' or 'trainer'"),
        ("eval.vllm.nope=1", "eval.vllm.nope: unknown key"),
    ],
)
def test_a_bad_engine_setting_names_its_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        dpo_config(tmp_path, "m", override)
    with pytest.raises(ConfigError, match=r"eval\.engine: .*unknown engine 'nope'"):
        pipeline_config("eval.engine=nope")
    with pytest.raises(ConfigError, match=r"feedback\.engine: .*unknown engine 'nope'"):
        pipeline_config("feedback.engine=nope")


# ------------------------------------------------------------------------------ the CLI


def sample_args(tmp_path, model, *extra):
    return ("sample", "--model", model, "--prompts", PROMPTS, "-k", 2, "--max-new-tokens", 3,
            "--device", "cpu", "--no-progress", "-o", tmp_path / "c.jsonl", *extra)  # fmt: skip


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("nope=1", "Invalid value for '--vllm': unknown key 'nope' (expected one of placement,"),
        ("placement=gpu", "Invalid value for '--vllm': placement='gpu': Input should be 'process'"),
        ("sync_bucket_mb=0", "Invalid value for '--vllm': sync_bucket_mb=0: Input should be"),
        ("placement", "Invalid value for '--vllm': 'placement': expected KEY=VALUE"),
        ("vllm.dtype=float16", "Invalid value for '--vllm': unknown key 'vllm.dtype'"),
    ],
)
def test_a_bad_vllm_option_is_one_usage_line_naming_it(tmp_path, option, message):
    for command in (
        sample_args(tmp_path, "unused", "--engine", "vllm", "--vllm", option),
        ("best-of-n", "--model", "unused", "--prompts", PROMPTS, "--reward", "rule=arithmetic",
         "--engine", "vllm", "--vllm", option),
        ("feedback", "serve", "--model", "unused", "--engine", "vllm", "--vllm", option),
    ):  # fmt: skip
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len([line for line in result.output.splitlines() if "--vllm" in line]) == 1


def test_an_unknown_engine_and_options_without_it_are_refused(tmp_path):
    result = invoke(*sample_args(tmp_path, "unused", "--engine", "nope"))
    assert result.exit_code == 2 and "Invalid value for '--engine'" in result.output
    result = invoke(*sample_args(tmp_path, "unused", "--vllm", "dtype=bfloat16"))
    assert result.exit_code == 2 and "--vllm sets the vLLM engine's options" in result.output
    result = invoke("feedback", "serve", "--engine", "vllm")
    assert result.exit_code == 1 and "add --model" in result.output


def test_sample_and_best_of_n_build_the_chosen_engine_with_its_options_and_close_it(
    tmp_path, tiny_model_dir, monkeypatch
):
    # the command line offers hf | vllm: the recording engine stands in for vllm here
    monkeypatch.setitem(factory.ENGINES, "vllm", f"{__name__}:RecordingEngine")
    RecordingEngine.events = []
    options = ("--engine", "vllm", "--vllm", "placement=trainer", "--vllm", "sync_bucket_mb=8")
    result = invoke(*sample_args(tmp_path, tiny_model_dir, "--batch-size", 4, *options))
    assert result.exit_code == 0, result.output
    assert kinds(RecordingEngine.events) == ["built", "generate", "closed"]
    assert RecordingEngine.events[0] == ("built", 4)
    closed = RecordingEngine.events[-1][1]
    assert (closed.placement, closed.sync_bucket_mb, closed.dtype) == ("trainer", 8, "auto")
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(row["responses"]) == 2 for row in rows)

    RecordingEngine.events.clear()
    result = invoke(
        "best-of-n", "--model", tiny_model_dir, "--prompts", PROMPTS, "--reward",
        "rule=arithmetic", "--max-n", 2, "--max-new-tokens", 3, "--device", "cpu",
        "--out", tmp_path / "bon", *options,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert kinds(RecordingEngine.events) == ["built", "generate", "closed"]
    assert RecordingEngine.events[-1][1].placement == "trainer"


def test_the_feedback_sampler_uses_the_chosen_engine_and_closes_it(tiny_model_dir, monkeypatch):
    from rlhf.cli import feedback_sampler

    monkeypatch.setitem(factory.ENGINES, "vllm", f"{__name__}:RecordingEngine")
    RecordingEngine.events = []
    sampler = feedback_sampler(
        str(tiny_model_dir), "float32", "cpu", 3, 1.0, 1.0, seed=0, engine="vllm",
        vllm=["dtype=float32"],
    )  # fmt: skip
    assert [len(replies) for replies in sampler(["2+3="], 2)] == [2]
    sampler.close()
    assert kinds(RecordingEngine.events) == ["built", "generate", "closed"]
    assert RecordingEngine.events[-1][1].dtype == "float32"


def test_an_engine_that_fails_is_still_closed(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(factory.ENGINES, "vllm", f"{__name__}:BrokenEngine")
    RecordingEngine.events = []
    result = invoke(*sample_args(tmp_path, tiny_model_dir, "--engine", "vllm"))
    assert result.exit_code == 1 and "the engine broke" in result.output
    assert kinds(RecordingEngine.events) == ["built", "closed"]


# ------------------------------------------------------------------------------ recipes


def test_dpo_samples_its_kl_with_eval_engine_and_closes_it(tmp_path, tiny_model_dir, recording):
    from rlhf.recipes.dpo import run_dpo

    result = run_dpo(dpo_config(tmp_path, tiny_model_dir, "eval.engine=recording"))
    assert "eval_kl" in result.metrics[-1]
    assert kinds(recording)[0] == "built" and kinds(recording)[-1] == "closed"
    assert kinds(recording).count("generate") >= 1 and kinds(recording).count("closed") == 1


def test_the_pipeline_feedback_stage_samples_with_feedback_engine(
    tmp_path, tiny_model_dir, recording
):
    from rlhf.recipes.pipeline import collect_feedback

    config = pipeline_config(
        "feedback.engine=recording",
        "feedback.prompts=builtin:world-prompts?n=6&seed=1&split=train",
        "feedback.samples_per_prompt=2",
        "feedback.max_new_tokens=3",
        "feedback.batch_size=4",
    )
    result = collect_feedback(config, str(tiny_model_dir), tmp_path, progress=False)
    assert result.samples.is_file()
    assert kinds(recording) == ["built", "generate", "closed"]
    assert recording[0] == ("built", 4)


def test_raft_samples_with_sampling_engine_and_closes_it(tmp_path, tiny_model_dir, recording):
    from rlhf.recipes.raft import RAFTConfig, run_raft

    config = RAFTConfig.model_validate(
        {
            "out": str(tmp_path / "raft"),
            "progress": False,
            "tensorboard": False,
            "model": {"path": str(tiny_model_dir)},
            "prompts": "builtin:arithmetic?n=8",
            "reward": {"rule": "arithmetic"},
            "raft": {"rounds": 1, "prompts_per_round": 2, "num_samples": 2, "eval_prompts": 2},
            "sampling": {"max_new_tokens": 3, "engine": "recording", "batch_size": 4},
            "data": {"max_length": 64},
            "train": {"batch_size": 2, "max_steps": 1},
        }
    )
    run_raft(config)
    # before round 1, round 1's rollout, after round 1; one engine for the run
    assert kinds(recording) == ["built", "generate", "generate", "generate", "closed"]
