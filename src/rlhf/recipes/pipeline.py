"""The whole RLHF loop in one run, every stage the project's own recipe::

    pretrain (tiny models) → SFT → sample K responses per prompt → labels → reward model
        → PPO against the reward model at each KL coefficient → DPO on the same labels
        → (GRPO) → evaluation with the gold reward → report

``rlhf quickstart`` runs it on the embedded world (:mod:`rlhf.sim`), whose gold reward says
what people "really" want and whose simulated annotators label the samples; ``rlhf run
pipeline.yaml`` runs the same stages on any model and data (``feedback.annotator_reward`` then
labels with a judge or any other reward, and ``eval.gold`` is what the report calls gold).

The config holds one section per stage. A stage's section is a partial config of that stage's
recipe (``rlhf sft --help`` lists its keys); the pipeline fills in what chains the stages (each
stage's ``out`` under the pipeline's ``out``, ``model.path`` from the stage before, the data the
feedback stage wrote, the seed) wherever the section leaves it unset, and every stage's config
is validated when the pipeline's is loaded, so a typo fails before anything trains.

With a ``prm`` section a process reward model trains from the SFT policy too, and the report
compares choosing one of the SFT policy's best-of-N samples by it, by the reward model and by
voting (``rlhf run builtin:process-supervision``, on the embedded step world).

Output (``out``): one folder per stage (``pretrain/``, ``sft/``, ``feedback/``,
``reward_model/``, ``ppo-kl0.01/``, ..., ``dpo/``, ``prm/``), ``metrics.jsonl`` (every stage's
rows, each with its ``stage``), ``report/`` (``report.md``, ``report.html``, plots,
``report.json``).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from rlhf.config import ConfigError, StrictModel, _deep_merge
from rlhf.data.records import Record, Text
from rlhf.eval.policies import EvalConfig, PipelineRuns, TrainedRun
from rlhf.eval.results import Report, StageTiming
from rlhf.recipes.common import AnnotatorsConfig, ModelConfig, RecipeConfig, RunResult
from rlhf.recipes.registry import stage_config, stage_recipe
from rlhf.rewards.spec import RewardSpec
from rlhf.rollout.types import EngineChoice

if TYPE_CHECKING:
    from rlhf.rewards.base import RewardFunction

logger = logging.getLogger("rlhf")


class FeedbackConfig(EngineChoice):
    """Sampling the SFT policy (with ``engine``: ``feedback.engine=vllm``, ``feedback.vllm.*``)
    and labelling its responses."""

    prompts: str = Field(
        "builtin:world-prompts?n=512&seed=1&split=train",
        description="Prompts to sample for (also PPO's training prompts unless set there).",
    )
    samples_per_prompt: int = Field(4, ge=2, le=8, description="K responses per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    max_new_tokens: int = Field(48, ge=1, description="Response tokens at most.")
    batch_size: int = Field(256, ge=1, description="Sequences sampled together.")
    kind: Literal["pairs", "rankings", "ratings"] = Field(
        "pairs", description="What annotators give: pairwise choices, rankings or 1-5 ratings."
    )
    heldout_fraction: float = Field(
        0.15, gt=0, lt=1, description="Share of prompts whose labels are held out (RM accuracy)."
    )
    annotators: AnnotatorsConfig = Field(default_factory=AnnotatorsConfig)
    annotator_reward: RewardSpec | None = Field(
        None,
        description="Label with this reward (Bradley-Terry at annotators.temperature) instead "
        "of the embedded world's gold reward, e.g. a judge for real models.",
    )


class PipelineConfig(StrictModel):
    out: str = Field("runs/pipeline", description="Output folder (one sub-folder per stage).")
    seed: int = Field(0, description="Seed of every stage (unless a stage sets its own).")
    overwrite: bool = Field(False, description="Allow re-running into a folder that has runs.")
    progress: bool = Field(True, description="Show progress bars.")
    model: ModelConfig = Field(description="The base model: a tiny one from scratch or a path.")
    pretrain: dict[str, Any] | None = Field(
        None, description="Pretraining (a partial `rlhf pretrain` config; null: skip)."
    )
    sft: dict[str, Any] | None = Field(
        None, description="Supervised fine-tuning (a partial `rlhf sft` config; null: skip)."
    )
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    reward_model: dict[str, Any] = Field(
        default_factory=dict, description="The reward model (a partial `rlhf rm` config)."
    )
    ppo: dict[str, Any] | None = Field(
        None, description="PPO against the reward model (a partial `rlhf ppo` config)."
    )
    ppo_kl_coefs: list[float] = Field(
        [0.002, 0.05],
        min_length=1,
        max_length=4,
        description="One PPO run per KL coefficient β (one small, one larger: the curves).",
    )
    dpo: dict[str, Any] | None = Field(
        None, description="DPO on the same labels (a partial `rlhf dpo` config; null: skip)."
    )
    grpo: dict[str, Any] | None = Field(
        None, description="GRPO against the reward model (a partial `rlhf grpo` config)."
    )
    dpo_losses: list[str] = Field(
        [],
        max_length=4,
        description="More offline runs like `dpo`, one per loss name (e.g. [ipo, hinge]): "
        "the DPO family compared at matched KL (gold against KL on one plot).",
    )
    online_dpo: dict[str, Any] | None = Field(
        None,
        description="Online DPO from the SFT policy, its pairs labelled by the feedback "
        "stage's annotators (a partial `rlhf online-dpo` config): online against offline DPO "
        "at matched KL.",
    )
    preference_model: dict[str, Any] | None = Field(
        None,
        description="A pairwise preference model on the feedback labels (a partial `rlhf pm` "
        "config): what nash_md and sppo optimise against.",
    )
    nash_md: dict[str, Any] | None = Field(
        None, description="Nash-MD against the preference model (a partial `rlhf nash-md` config)."
    )
    sppo: dict[str, Any] | None = Field(
        None, description="SPPO against the preference model (a partial `rlhf sppo` config)."
    )
    prm: dict[str, Any] | None = Field(
        None,
        description="A process reward model from the SFT policy (a partial `rlhf prm` config; "
        "its data.train: step-labelled solutions): the report then compares choosing one of "
        "the SFT policy's best-of-N samples by it, by the reward model and by voting, scored "
        "by eval.gold (a 0/1 verifier such as rule=step_world).",
    )
    title: str | None = Field(None, description="The report's title (default: from eval.gold).")
    notes: list[str] = Field([], description="Lines added to the report's notes.")
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _stages_valid(self) -> PipelineConfig:
        if self.model.tiny is not None and self.pretrain is None:
            raise ValueError("model.tiny starts from random weights: set `pretrain`")
        if any(coef <= 0 for coef in self.ppo_kl_coefs):
            raise ValueError(
                "ppo_kl_coefs: each β must be > 0 (the report's KL is measured against the "
                "reference, which β = 0 drops); use a very small one, e.g. 0.001"
            )
        if self.dpo_losses and self.dpo is None:
            raise ValueError("dpo_losses: each is a run like `dpo`; set the `dpo` section too")
        if len(set(self.dpo_losses)) != len(self.dpo_losses):
            raise ValueError(f"dpo_losses: a loss is named twice: {self.dpo_losses}")
        if self.prm is not None and self.eval.best_of_n < 2:
            raise ValueError(
                "prm: the report compares choosing among the SFT policy's best-of-N samples; "
                "set eval.best_of_n to 2 or more"
            )
        needing = [name for name in ("nash_md", "sppo") if getattr(self, name) is not None]
        if needing and self.preference_model is None:
            raise ValueError(
                f"{' and '.join(needing)} optimise against the pairwise preference model: "
                "set the `preference_model` section too"
            )
        stage_configs(self)  # every stage's config must validate now
        return self


# ------------------------------------------------------------------------------ stage configs


@dataclass
class Stages:
    """Every stage's validated config and where its model lands."""

    out: Path
    pretrain: RecipeConfig | None
    sft: RecipeConfig | None
    reward_model: RecipeConfig
    policy_dir: str  # the SFT policy (the base model when there is no SFT stage)
    ppo: dict[float, RecipeConfig] = field(default_factory=dict)  # by KL coefficient β
    dpo: RecipeConfig | None = None
    grpo: RecipeConfig | None = None
    dpo_losses: dict[str, RecipeConfig] = field(default_factory=dict)  # by loss name
    online_dpo: RecipeConfig | None = None
    preference_model: RecipeConfig | None = None
    nash_md: RecipeConfig | None = None
    sppo: RecipeConfig | None = None
    prm: RecipeConfig | None = None

    @property
    def feedback_dir(self) -> Path:
        return self.out / "feedback"

    def trained_after_feedback(self) -> list[tuple[str, str, RecipeConfig]]:
        """(name in the plan, stage, config) of every run after the reward model, in order."""
        runs: list[tuple[str, str, RecipeConfig | None]] = [
            *((f"ppo-kl{coef:g}", "ppo", ppo) for coef, ppo in self.ppo.items()),
            ("dpo", "dpo", self.dpo),
            ("grpo", "grpo", self.grpo),
            *((f"dpo-{loss}", "dpo", dpo) for loss, dpo in self.dpo_losses.items()),
            ("online-dpo", "online_dpo", self.online_dpo),
            ("preference_model", "preference_model", self.preference_model),
            ("nash-md", "nash_md", self.nash_md),
            ("sppo", "sppo", self.sppo),
            ("prm", "prm", self.prm),
        ]
        return [(name, stage, config) for name, stage, config in runs if config is not None]


def stage_configs(config: PipelineConfig) -> Stages:
    """Each stage's recipe config, chained: the pipeline's defaults where a section is silent.
    A stage's config class is the one its recipe registers (:mod:`rlhf.recipes.registry`)."""

    def config_class(stage: str) -> type[RecipeConfig]:
        return stage_recipe(stage).config_class()

    out = Path(config.out)
    common = {"train.seed": config.seed, "progress": config.progress, "tensorboard": False}
    model = config.model.model_dump(exclude_none=True)
    base = config.model.path or ""
    pretrain = None
    if config.pretrain is not None:
        pretrain = stage_config(
            config_class("pretrain"),
            "pretrain",
            config.pretrain,
            {"out": str(out / "pretrain"), "model": model, **common},
        )
        base = str(out / "pretrain" / "model")
    sft = None
    if config.sft is not None:
        sft = stage_config(
            config_class("sft"),
            "sft",
            config.sft,
            {"out": str(out / "sft"), "model.path": base, **common},
        )
    policy = str(out / "sft" / "model") if sft else base
    feedback = out / "feedback"
    # the reward model and DPO train from the policy on the feedback stage's labels
    on_labels = {
        "model.path": policy,
        "data.train": str(feedback / "train.jsonl"),
        "data.eval": str(feedback / "heldout.jsonl"),
        **common,
    }
    rm = stage_config(
        config_class("reward_model"),
        "reward_model",
        config.reward_model,
        {"out": str(out / "reward_model"), **on_labels},
    )
    rm_model = str(out / "reward_model" / "model")
    gold = config.eval.gold.model_dump(exclude_none=True)
    online = {
        "model.path": policy,
        "data.prompts": config.feedback.prompts,
        "data.eval_prompts": config.eval.prompts,
        "reward.model": rm_model,
        "eval.gold_reward": gold,
        "eval.greedy": False,
        **common,
    }
    stages = Stages(out=out, pretrain=pretrain, sft=sft, reward_model=rm, policy_dir=policy)
    if config.prm is not None:
        stages.prm = stage_config(
            config_class("prm"),
            "prm",
            config.prm,
            {"out": str(out / "prm"), "model.path": policy, **common},
        )
    for coef in config.ppo_kl_coefs if config.ppo is not None else []:
        stages.ppo[coef] = stage_config(
            config_class("ppo"),
            f"ppo (kl.coef={coef:g})",
            _deep_merge(_deep_merge({}, config.ppo or {}), {"kl": {"coef": coef}}),
            {"out": str(out / f"ppo-kl{coef:g}"), **online},
        )
    if config.dpo is not None:
        # its held-out evaluations score their KL samples with gold too, from the starting
        # policy on: gold and the implicit reward along training
        dpo_defaults = {"eval.gold_reward": gold, "eval.before": True, **on_labels}
        stages.dpo = stage_config(
            config_class("dpo"), "dpo", config.dpo, {"out": str(out / "dpo"), **dpo_defaults}
        )
        for loss in config.dpo_losses:
            stages.dpo_losses[loss] = variant = stage_config(
                config_class("dpo"),
                f"dpo (loss.name={loss})",
                _deep_merge(_deep_merge({}, config.dpo), {"loss": {"name": loss}}),
                {"out": str(out / f"dpo-{loss}"), **dpo_defaults},
            )
            if not variant.loss.needs_reference:  # type: ignore[attr-defined]
                raise ConfigError(
                    f"dpo_losses: {loss} is reference-free, so it has no KL to the reference to "
                    "be compared at"
                )
    if config.grpo is not None:
        stages.grpo = stage_config(
            config_class("grpo"), "grpo", config.grpo, {"out": str(out / "grpo"), **online}
        )
    if config.online_dpo is not None:
        # the same people as the offline labels judge the policy's own samples
        annotators = config.feedback.annotators.model_dump()
        stages.online_dpo = stage_config(
            config_class("online_dpo"),
            "online_dpo",
            config.online_dpo,
            {
                "out": str(out / "online-dpo"),
                "labeller.kind": "annotators",
                "labeller.annotators": annotators,
                "eval.before": True,
                **online,
            },
        )
    if config.preference_model is not None:
        stages.preference_model = stage_config(
            config_class("preference_model"),
            "preference_model",
            config.preference_model,
            {"out": str(out / "preference_model"), **on_labels},
        )
        nash = {"preference.model": str(out / "preference_model" / "model"), **online}
        for name in ("nash_md", "sppo"):
            section = getattr(config, name)
            if section is not None:
                folder = str(out / name.replace("_", "-"))
                setattr(
                    stages,
                    name,
                    stage_config(config_class(name), name, section, {"out": folder, **nash}),
                )
    return stages


def evaluated_runs(stages: Stages) -> PipelineRuns:
    """Where the evaluation reads each policy from: SFT, then PPO at each β (each with its
    training curve), DPO and GRPO."""
    trained = [
        TrainedRun(
            f"PPO β={coef:g}",
            Path(ppo.out),
            curve_kl_coef=coef,
            curve_prompts=_eval_prompts(ppo),
        )
        for coef, ppo in stages.ppo.items()
    ]
    # the DPO family: gold against KL along training when they evaluate along it
    if stages.dpo is not None:
        trained.append(_direct_run("DPO", stages.dpo, "offline"))
    trained += [
        _direct_run(LOSS_LABELS.get(loss, f"DPO ({loss})"), dpo, "offline")
        for loss, dpo in stages.dpo_losses.items()
    ]
    trained += [TrainedRun("GRPO", Path(stages.grpo.out))] if stages.grpo is not None else []
    if stages.online_dpo is not None:
        trained.append(_direct_run("online DPO", stages.online_dpo, "online"))
    # the Nash policies, each also against every PPO run under the gold preference
    opponents = ("SFT", *(run.name for run in trained if run.name.startswith("PPO")))
    for name, stage in (("Nash-MD", stages.nash_md), ("SPPO", stages.sppo)):
        if stage is not None:
            trained.append(TrainedRun(name, Path(stage.out), opponents=opponents))
    return PipelineRuns(
        sft=stages.policy_dir,
        reward_model=Path(stages.reward_model.out),
        feedback=stages.feedback_dir,
        trained=trained,
        process_reward_model=None if stages.prm is None else Path(stages.prm.out),
    )


# the report's names of the DPO family's losses (hinge is SLiC's, Zhao et al. 2023)
LOSS_LABELS = {"dpo": "DPO", "ipo": "IPO", "hinge": "SLiC (hinge)"}


def _direct_run(name: str, stage: RecipeConfig, kind: Literal["offline", "online"]) -> TrainedRun:
    """A DPO-family run; with ``train.eval_every`` > 0 it gives a gold-against-KL curve."""
    if not stage.train.eval_every:  # type: ignore[attr-defined]
        return TrainedRun(name, Path(stage.out))
    beta = stage.loss.effective_beta  # type: ignore[attr-defined]
    return TrainedRun(name, Path(stage.out), curve_kl_coef=beta, preference_curve=kind)


def _eval_prompts(online: RecipeConfig) -> int:
    """An online recipe's ``eval.prompts``: the held-out prompts of each evaluation while it
    trains (the section every online config has; RecipeConfig does not declare it)."""
    return int(online.model_dump(include={"eval": {"prompts"}})["eval"]["prompts"])


# ------------------------------------------------------------------------------ feedback


@dataclass
class FeedbackResult:
    train: Path  # labelled records (JSONL) the reward model and DPO train on
    heldout: Path  # labelled records of held-out prompts (RM accuracy, DPO eval)
    samples: Path  # every sampled response (what `rlhf sample` writes)
    train_labels: int
    heldout_labels: int


def _write_records(path: Path, records: Sequence[Record]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    return path


def reward_annotator_labels(
    reward: RewardFunction,
    prompts: Sequence[Text],
    groups: Sequence[Sequence[str]],
    settings: FeedbackConfig,
    seed: int,
) -> list[Record]:
    """Labels by a simulated annotator who values ``reward`` (a judge, a reward model) instead
    of the world's gold: Bradley-Terry pairs, P(a ≻ b) = σ((r(a) − r(b)) / temperature), each
    of a group's distinct pairs once, or Plackett-Luce rankings; a ``careless`` share at random
    (:class:`rlhf.sim.annotators.SimulatedAnnotator`, :func:`~rlhf.sim.annotators.label_groups`)."""
    from rlhf.rewards.base import call_reward
    from rlhf.sim.annotators import SimulatedAnnotator, label_groups

    if settings.kind == "ratings":
        raise ConfigError(
            "feedback.kind: labelling with feedback.annotator_reward gives pairs or rankings "
            "(1-5 ratings are calibrated to the world's gold)"
        )
    rows = [(p, r) for p, group in zip(prompts, groups, strict=True) for r in group]
    scores = call_reward(reward, [p for p, _ in rows], [r for _, r in rows]).tolist()
    table = dict(zip(rows, scores, strict=True))
    annotator = SimulatedAnnotator(
        settings.annotators.temperature,
        careless=settings.annotators.careless,
        seed=seed,
        reward=lambda prompt, response: table[prompt, response],
    )
    return label_groups(prompts, groups, settings.kind, annotators=annotator, seed=seed)


def collect_feedback(
    config: PipelineConfig, policy_dir: str, out: Path, progress: bool = True
) -> FeedbackResult:
    """Sample K responses per prompt from the policy and have them labelled; held-out prompts'
    labels go to their own file."""
    from rlhf.eval.sampling import sample_to_file
    from rlhf.rewards.spec import build_reward
    from rlhf.rollout.candidates import load_prompts, read_candidates
    from rlhf.rollout.factory import close_engine, load_engine_for
    from rlhf.rollout.types import SamplingParams

    settings = config.feedback
    prompts = load_prompts(settings.prompts)
    params = SamplingParams(
        settings.max_new_tokens,
        temperature=settings.temperature,
        num_samples=settings.samples_per_prompt,
        seed=config.seed,
    )
    samples = out / "samples.jsonl"
    engine = load_engine_for(settings, policy_dir, batch_size=settings.batch_size)
    try:
        sample_to_file(engine, prompts, params, samples, progress=progress)
    finally:
        close_engine(engine)
    candidates = read_candidates(samples)
    order = list(range(len(candidates)))
    random.Random(config.seed).shuffle(order)
    held = set(order[: max(1, round(settings.heldout_fraction * len(order)))])
    labelled: dict[bool, list[Record]] = {}
    for heldout in (False, True):
        chosen = [c for i, c in enumerate(candidates) if (i in held) == heldout]
        groups = [list(c.responses) for c in chosen]
        group_prompts = [c.prompt for c in chosen]
        seed = config.seed * 2 + int(heldout)
        if settings.annotator_reward is not None:
            reward = build_reward(settings.annotator_reward)
            labelled[heldout] = reward_annotator_labels(
                reward, group_prompts, groups, settings, seed
            )
        else:
            labelled[heldout] = world_labels(group_prompts, groups, settings, seed)
    return FeedbackResult(
        train=_write_records(out / "train.jsonl", labelled[False]),
        heldout=_write_records(out / "heldout.jsonl", labelled[True]),
        samples=samples,
        train_labels=len(labelled[False]),
        heldout_labels=len(labelled[True]),
    )


def world_labels(
    prompts: Sequence[Text], groups: Sequence[Sequence[str]], settings: FeedbackConfig, seed: int
) -> list[Record]:
    """The embedded world's simulated annotators label each group of K responses."""
    return settings.annotators.pool(seed).label_groups(prompts, groups, kind=settings.kind)


# ------------------------------------------------------------------------------ the run


@dataclass
class PipelineResult:
    out_dir: Path
    report_dir: Path
    report: Report
    timings: dict[str, float]


StageHook = Callable[[str, int, int], None]


def run_pipeline(
    config: PipelineConfig, on_stage: StageHook | None = None, start: str | None = None
) -> PipelineResult:
    """Run every stage in order; ``on_stage(name, index, total)`` is called as each starts.

    ``start``: begin at this stage, keeping what the stages before it wrote in ``out`` (e.g.
    ``reward_model`` after changing its settings); their rows stay in ``metrics.jsonl``."""
    from rlhf.eval.policies import evaluate_pipeline
    from rlhf.eval.report import write_report

    stages = stage_configs(config)
    out = stages.out
    if start is None and out.exists() and any(out.iterdir()) and not config.overwrite:
        raise ValueError(
            f"{out} is not empty; pass overwrite=true to run again there, or choose another out="
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(config.model_dump_json(indent=2), encoding="utf-8")
    plan: list[tuple[str, Callable[[], Any]]] = []
    results: dict[str, Any] = {}

    def recipe(name: str, stage: str, run_config: RecipeConfig) -> None:
        """Plan stage ``name``: the recipe registered for ``stage`` on ``run_config`` (on
        Ray workers when its own ``distributed`` section asks)."""
        entry = stage_recipe(stage)

        def go() -> RunResult:
            run_config.overwrite = True
            return entry.start(run_config, False)

        plan.append((name, go))

    if stages.pretrain is not None:
        recipe("pretrain", "pretrain", stages.pretrain)
    if stages.sft is not None:
        recipe("sft", "sft", stages.sft)
    plan.append(
        (
            "feedback",
            lambda: collect_feedback(
                config, stages.policy_dir, stages.feedback_dir, config.progress
            ),
        )
    )
    recipe("reward_model", "reward_model", stages.reward_model)
    for name, stage, run_config in stages.trained_after_feedback():
        recipe(name, stage, run_config)
    evaluation = (config.eval, evaluated_runs(stages))
    plan.append(
        (
            "evaluate",
            lambda: evaluate_pipeline(
                *evaluation,
                seed=config.seed,
                label_kind=config.feedback.kind,
                config=json.loads(config.model_dump_json()),
                title=config.title,
                notes=config.notes,
            ),
        )
    )

    names = [name for name, _ in plan]
    if start is not None and start not in names:
        raise ConfigError(f"--from {start}: no such stage here (stages: {', '.join(names)})")
    skipped = set(names[: names.index(start)] if start else [])
    metrics_path = out / "metrics.jsonl"
    kept = []
    if skipped and metrics_path.exists():
        lines = metrics_path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["stage"] in skipped]
    metrics_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    timings: dict[str, float] = {}
    for index, (name, go) in enumerate(plan):
        if name in skipped:
            continue
        if on_stage is not None:
            on_stage(name, index, len(plan))
        logger.info("stage %d/%d: %s", index + 1, len(plan), name)
        start = time.perf_counter()
        try:
            results[name] = go()
        except ConfigError:
            raise
        except Exception as error:  # say which stage failed; the cause is chained
            detail = str(error) if isinstance(error, ValueError | OSError) else repr(error)
            raise RuntimeError(f"pipeline stage `{name}` failed: {detail}") from error
        timings[name] = time.perf_counter() - start
        if isinstance(results[name], RunResult):  # its rows, each marked with the stage
            stage_rows = (results[name].out_dir / "metrics.jsonl").read_text(encoding="utf-8")
            with metrics_path.open("a", encoding="utf-8") as file:
                for line in stage_rows.splitlines():
                    if line.strip():
                        file.write(json.dumps({"stage": name, **json.loads(line)}) + "\n")
    report = results["evaluate"]
    report.timings = [StageTiming(name, round(seconds, 2)) for name, seconds in timings.items()]
    report_dir = out / "report"
    write_report(report, report_dir)
    return PipelineResult(out, report_dir, report, timings)
