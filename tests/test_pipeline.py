"""The whole loop (`rlhf quickstart --preset tiny`) and the pipeline config's checks."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from rlhf.cli import app
from rlhf.config import ConfigError, load_config, preset_path, read_yaml
from rlhf.recipes.pipeline import PipelineConfig, reward_annotator_labels, stage_configs


def tiny(*overrides: str) -> PipelineConfig:
    return load_config(
        PipelineConfig, None, list(overrides), base=read_yaml(preset_path("pipeline", "tiny"))
    )


def test_tiny_quickstart_writes_a_complete_finite_report(tmp_path):
    """Every stage runs through the CLI, and the report holds every policy, both PPO curves, the
    best-of-N curve and the reward model's accuracy, all finite (the preset's numbers are too
    small to say anything about RLHF; the structure is what is checked)."""
    from rlhf.eval.report import load_report
    from rlhf.eval.stats import non_finite_fields

    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["quickstart", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report_dir = out / "report"
    for name in ("report.md", "report.html", "report.json", "overoptimisation.png", "policies.png"):
        assert (report_dir / name).stat().st_size > 0, name
    assert (report_dir / "overoptimisation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = load_report(report_dir / "report.json")
    assert non_finite_fields(report) == []
    assert [p.name for p in report.policies] == ["SFT", "PPO β=0.002", "PPO β=0.05", "DPO", "GRPO"]
    sft = report.policies[0]
    assert sft.kl_to_sft == 0 and sft.win_rate_vs_sft is None and sft.samples
    for policy in report.policies[1:]:
        assert 0 <= policy.win_rate_vs_sft <= 1
    assert [c.kl_coef for c in report.curves] == [0.002, 0.05]
    for curve in report.curves:
        assert [p.step for p in curve.points] == [0, 1, 2, 3]  # start + eval_every=1
        assert curve.points[0].kl == 0
    assert [p.n for p in report.best_of_n] == [1, 2, 4]
    assert report.best_of_n[0].kl == 0
    assert 0 <= report.reward_model.accuracy <= 1 and 0.5 <= report.reward_model.ceiling <= 1
    assert {t.stage for t in report.timings} == {
        "pretrain", "sft", "feedback", "reward_model", "ppo-kl0.002", "ppo-kl0.05", "dpo",
        "grpo", "evaluate",
    }  # fmt: skip
    # every stage's rows reach the pipeline's metrics.jsonl, marked with the stage
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {row["stage"] for row in rows} == {
        "pretrain", "sft", "reward_model", "ppo-kl0.002", "ppo-kl0.05", "dpo", "grpo",
    }  # fmt: skip
    # the feedback stage's files are what `rlhf rm` / `rlhf dpo` read
    labels = (out / "feedback" / "train.jsonl").read_text().splitlines()
    assert {"prompt", "chosen", "rejected"} <= json.loads(labels[0]).keys()
    markdown = (report_dir / "report.md").read_text()
    assert "Over-optimisation" in markdown and "PPO β=0.002" in markdown
    assert "report.md" in result.output

    # re-running from the evaluation reuses the trained stages and gives the same numbers
    rerun = CliRunner().invoke(app, ["run", str(out / "pipeline.json"), "--from", "evaluate"])
    assert rerun.exit_code == 0, rerun.output
    again = load_report(report_dir / "report.json")
    assert [p.gold_mean for p in again.policies] == [p.gold_mean for p in report.policies]
    assert again.best_of_n == report.best_of_n

    # and the whole run again with the same seed gives the same numbers everywhere
    second = tmp_path / "second"
    result = CliRunner().invoke(app, ["quickstart", "--preset", "tiny", "--out", str(second)])
    assert result.exit_code == 0, result.output
    twin = load_report(second / "report" / "report.json")
    assert [p.to_dict() for p in twin.policies] == [p.to_dict() for p in report.policies]
    assert twin.curves == report.curves and twin.reward_model == report.reward_model


def test_stage_sections_are_checked_when_the_pipeline_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"stage `ppo \(kl.coef=0.002\)`(.|\n)*rollout.iteratons"):
        tiny(f"out={tmp_path}", "ppo.rollout.iteratons=3")
    with pytest.raises(ConfigError, match=r"stage `reward_model`(.|\n)*train.lr"):
        tiny(f"out={tmp_path}", "reward_model.train.lr=-1")
    with pytest.raises(ConfigError, match="set `pretrain`"):
        tiny(f"out={tmp_path}", "pretrain=null")
    with pytest.raises(ConfigError, match="each β must be > 0"):
        tiny(f"out={tmp_path}", "ppo_kl_coefs=[0, 0.1]")


def test_stages_chain_each_others_outputs(tmp_path):
    stages = stage_configs(tiny(f"out={tmp_path}", "seed=7"))
    assert stages.sft.model.path == str(tmp_path / "pretrain" / "model")
    assert stages.reward_model.model.path == str(tmp_path / "sft" / "model")
    assert stages.reward_model.data.train == str(tmp_path / "feedback" / "train.jsonl")
    ppo = stages.ppo[0.05]
    assert ppo.kl.coef == 0.05 and ppo.out == str(tmp_path / "ppo-kl0.05")
    assert ppo.reward.model == str(tmp_path / "reward_model" / "model")
    assert ppo.eval.gold_reward.rule == "world_gold"
    assert stages.dpo.data.eval == str(tmp_path / "feedback" / "heldout.jsonl")
    assert {stages.sft.train.seed, ppo.train.seed, stages.dpo.train.seed} == {7}
    # a section's own value wins over the chaining default
    assert stage_configs(tiny(f"out={tmp_path}", "dpo.train.seed=3")).dpo.train.seed == 3


def test_the_cli_names_an_unknown_start_stage(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text((preset_path("pipeline", "tiny")).read_text())
    result = CliRunner().invoke(app, ["run", str(config), f"out={tmp_path}", "--from", "rlhf"])
    assert result.exit_code == 2
    assert "no such stage" in result.output and "reward_model" in result.output


def test_reward_annotators_follow_bradley_terry():
    """Labelling with any reward: all K(K-1)/2 pairs of a group; at a tiny temperature the
    higher-reward response is always chosen, and with careless=1 about half the time."""
    from rlhf.recipes.pipeline import FeedbackConfig

    def length(prompts, responses):
        import torch

        return torch.tensor([float(len(r)) for r in responses])

    groups = [["a", "bbb", "cc", "dddd"]] * 50
    prompts = ["p"] * 50
    sharp = FeedbackConfig(annotators={"temperature": 1e-3, "careless": 0.0})
    pairs = reward_annotator_labels(length, prompts, groups, sharp, seed=0)
    assert len(pairs) == 50 * 6
    assert all(len(p.chosen) > len(p.rejected) for p in pairs)
    careless = FeedbackConfig(annotators={"temperature": 1e-3, "careless": 1.0})
    pairs = reward_annotator_labels(length, prompts, groups, careless, seed=0)
    agree = sum(len(p.chosen) > len(p.rejected) for p in pairs) / len(pairs)
    assert abs(agree - 0.5) < 4 * math.sqrt(0.25 / len(pairs))
    ranked = FeedbackConfig(kind="rankings", annotators={"temperature": 1e-3, "careless": 0.0})
    rankings = reward_annotator_labels(length, prompts, groups, ranked, seed=0)
    assert len(rankings) == 50
    assert all(r.responses[list(r.ranks).index(0)] == "dddd" for r in rankings)
    with pytest.raises(ConfigError, match="pairs or rankings"):
        reward_annotator_labels(length, prompts, groups, FeedbackConfig(kind="ratings"), seed=0)


def offline_vs_online(*overrides: str) -> PipelineConfig:
    return load_config(
        PipelineConfig,
        None,
        list(overrides),
        base=read_yaml(preset_path("pipeline", "offline-vs-online-tiny")),
    )


def test_offline_vs_online_tiny_reports_every_claim(tmp_path):
    """`rlhf run builtin:offline-vs-online-tiny`: the DPO family and online DPO along training
    (from the starting policy on), the Nash policies head to head under the gold preference,
    and a verdict for each of the four claims (the tiny numbers say nothing about the claims;
    which verdicts come out is not checked, only that each is judged from the runs)."""
    from rlhf.eval.findings import assess
    from rlhf.eval.report import load_report

    out = tmp_path / "ovo"
    result = CliRunner().invoke(
        app, ["run", "builtin:offline-vs-online-tiny", f"out={out}", "progress=false"]
    )
    assert result.exit_code == 0, result.output
    report = load_report(out / "report")
    assert report.title == "Offline vs online preference optimisation (tiny)"
    assert [p.name for p in report.policies] == [
        "SFT", "PPO β=0.05", "DPO", "IPO", "SLiC (hinge)", "online DPO", "Nash-MD", "SPPO",
    ]  # fmt: skip
    curves = {c.label: c for c in report.preference_curves}
    assert list(curves) == ["DPO", "IPO", "SLiC (hinge)", "online DPO"]
    assert [c.online for c in curves.values()] == [False, False, False, True]
    for c in curves.values():
        assert c.points[0].step == 0 and c.points[0].kl == 0  # the SFT policy itself
    assert [p.step for p in curves["DPO"].points] == [0, 3, 6]  # eval_every 3 of 6 steps
    assert all(p.gold_se is not None for p in curves["DPO"].points)
    assert curves["DPO"].points[0].proxy == 0  # no implicit reward before training
    assert [p.step for p in curves["online DPO"].points] == [0, 1, 2, 3, 4]  # 2 steps × 2
    assert [(h.policy, h.opponent) for h in report.head_to_head] == [
        ("Nash-MD", "SFT"), ("Nash-MD", "PPO β=0.05"), ("SPPO", "SFT"), ("SPPO", "PPO β=0.05"),
    ]  # fmt: skip
    for match in report.head_to_head:
        assert 0 <= match.rate <= 1 and match.n == 32  # 16 prompts × 2 samples
    claims = [e.claim for e in assess(report).expectations]
    for claim in (
        "DPO over-optimises along training: gold first rises, then falls",
        "the offline losses (DPO, IPO, SLiC (hinge)) reach the same gold at matched KL",
        "online DPO reaches more gold than DPO at matched KL",
        "Nash-MD is preferred to PPO β=0.05 under the gold preference",
        "SPPO is preferred to PPO β=0.05 under the gold preference",
    ):
        assert claim in claims
    assert (out / "report" / "preference_curves.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (out / "report" / "report.md").read_text()
    assert "Head to head under the gold preference" in markdown
    # the online run's pairs were labelled by the feedback stage's people, cyclic taste too
    saved = read_yaml(out / "online-dpo" / "config.yaml")
    assert saved["labeller"]["kind"] == "annotators"
    assert saved["labeller"]["annotators"]["nontransitive"] == 0.1


def test_offline_vs_online_sections_are_checked(tmp_path):
    stages = stage_configs(offline_vs_online(f"out={tmp_path}"))
    assert stages.dpo_losses["ipo"].loss.name == "ipo"
    assert stages.dpo_losses["ipo"].out == str(tmp_path / "dpo-ipo")
    assert stages.dpo.eval.before and stages.dpo.eval.gold_reward.rule == "world_gold"
    assert stages.nash_md.preference.model == str(tmp_path / "preference_model" / "model")
    assert stages.preference_model.data.train == str(tmp_path / "feedback" / "train.jsonl")
    with pytest.raises(ConfigError, match="set the `dpo` section"):
        offline_vs_online(f"out={tmp_path}", "dpo=null")
    with pytest.raises(ConfigError, match="set the `preference_model` section"):
        offline_vs_online(f"out={tmp_path}", "preference_model=null")
    with pytest.raises(ConfigError, match="simpo is reference-free"):
        offline_vs_online(f"out={tmp_path}", "dpo_losses=[ipo, simpo]")
    with pytest.raises(ConfigError, match="named twice"):
        offline_vs_online(f"out={tmp_path}", "dpo_losses=[ipo, ipo]")
    result = CliRunner().invoke(app, ["run", "builtin:nope"])
    assert result.exit_code != 0 and "no preset 'nope' for pipeline" in result.output


def test_annotators_config_gives_the_pool_its_cyclic_taste():
    from rlhf.recipes.common import AnnotatorsConfig

    pool = AnnotatorsConfig(nontransitive=0.3).pool(seed=0)
    assert {annotator.nontransitive for annotator in pool.annotators} == {0.3}


@pytest.mark.parametrize("name", ["quickstart", "offline-vs-online"])
def test_the_full_packaged_pipelines_validate(name, tmp_path):
    """The presets too long for the tests load, every stage checked (typos fail here)."""
    config = load_config(
        PipelineConfig, None, [f"out={tmp_path}"], base=read_yaml(preset_path("pipeline", name))
    )
    stages = stage_configs(config)
    if name == "offline-vs-online":
        assert set(stages.dpo_losses) == {"ipo", "hinge"} and stages.sppo is not None
        assert config.eval.preference.nontransitive == config.feedback.annotators.nontransitive
    else:
        assert "builtin:offline-vs-online" in " ".join(config.notes)


def test_process_supervision_tiny_compares_choosing_one_of_n_in_the_report(tmp_path):
    """`rlhf run builtin:process-supervision-tiny`: a PRM stage after the reward model, and the
    report's "choosing one of N" comparison of the SFT policy's best-of-N samples; then the
    comparison's wiring on hand-made samples: the reward model's scores choose for the ORM,
    the gold verdicts say what is right, the PRM's own step scores choose for the PRM."""
    from rlhf.eval.policies import choose_among_samples
    from rlhf.eval.report import load_report
    from rlhf.eval.step_selection import comparison
    from rlhf.losses.prm import aggregate_steps
    from rlhf.rewards.prm import ProcessReward
    from rlhf.rollout.candidates import CandidateRecord

    out = tmp_path / "ps"
    result = CliRunner().invoke(
        app, ["run", "builtin:process-supervision-tiny", f"out={out}", "progress=false"]
    )
    assert result.exit_code == 0, result.output
    assert (out / "prm" / "model" / "config.json").exists()
    report = load_report(out / "report")
    labels = [selector.label for selector in comparison(with_outcome=True)]
    assert [(p.selector, p.n) for p in report.selection] == [
        (label, n) for label in labels for n in (1, 2, 4)
    ]
    assert all(0.0 <= p.accuracy <= 1.0 for p in report.selection)
    markdown = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert "## Choosing one of N solutions" in markdown and "selection.png" in markdown
    assert (out / "report" / "selection.png").stat().st_size > 0

    prompt = "Compute 4 - 1 - 2 - 1.\n"
    right = "4 - 1 = 3\n3 - 2 = 1\n1 - 1 = 0\nThe answer is 0."
    wrong = ["4 - 1 = 3\n3 - 2 = 2\n2 - 1 = 1\nThe answer is 1.", "4 - 1 = 2\nThe answer is 2."]
    responses = (wrong[0], right, wrong[1], right)
    sample = CandidateRecord(
        prompt, responses, (True,) * 4, (0.0,) * 4,
        extra={"rewards": [0.9, 0.1, 0.2, 0.3], "gold": [0.0, 1.0, 0.0, 1.0]},
    )  # fmt: skip
    points = {
        (p.selector, p.n): p.accuracy
        for p in choose_among_samples([sample], out / "prm" / "model", 4)
    }
    assert points["oracle (any right)", 1] == 0.5 and points["oracle (any right)", 4] == 1.0
    assert points["orm", 2] == 0.5 and points["orm", 4] == 0.0  # 0.9 is the wrong first one
    assert points["majority", 4] == 1.0  # "0" twice, "1" and "2" once each
    steps = ProcessReward(str(out / "prm" / "model")).step_scores([prompt] * 4, list(responses))
    products = [float(aggregate_steps(s, "product")) for s in steps]
    chosen = max(range(4), key=lambda k: (products[k], -k))  # ties: the first
    assert points["prm (product)", 4] == (1.0 if chosen in (1, 3) else 0.0)

    with pytest.raises(ConfigError, match=r"eval\.best_of_n"):
        load_config(
            PipelineConfig, None, ["eval.best_of_n=1"],
            base=read_yaml(preset_path("pipeline", "process-supervision-tiny")),
        )  # fmt: skip
