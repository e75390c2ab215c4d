"""Every training recipe, one line each: what the command line, the pipeline and the tests read.

A :class:`Recipe` names its command (``rlhf <name>``), the module holding it, its config class
and its run function (``run(config, resume) -> RunResult``) by *name*: they are imported on
first use (:meth:`Recipe.config_class`, :meth:`Recipe.run_function`), so this module imports no
recipe and no recipe imports another through it.

Adding a recipe is its file under ``rlhf/recipes/``, its preset ``presets/<name>_tiny.yaml``
and one line in :data:`RECIPES`; ``rlhf <name>`` (with every config key in ``--help``), the
smoke tests over every recipe and, with ``stage=``, the pipeline's stage then find it::

    Recipe("dapo", "rlhf.recipes.dapo", "DAPOConfig", "run_dapo",
           "DAPO: GRPO with decoupled clipping and dynamic sampling.", online=True),
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

if TYPE_CHECKING:
    from rlhf.recipes.common import RecipeConfig, RunResult

C = TypeVar("C", bound="RecipeConfig")

RunFunction: TypeAlias = "Callable[[RecipeConfig, bool], RunResult]"


@dataclass(frozen=True)
class Recipe:
    """One training recipe: where it lives and how the command line and pipeline show it."""

    name: str  # the command, `rlhf <name>`, and the prefix of its presets' files
    module: str  # the module holding the config class and the run function
    config: str  # its config class (a RecipeConfig), by name
    run: str  # its run function, run(config, resume) -> RunResult, by name
    help: str  # one line: the command's summary in `rlhf --help`
    presets: tuple[str, ...] = ("tiny",)  # packaged configs, presets/<name>_<preset>.yaml
    online: bool = False  # samples from the policy it trains (rollouts, rewards, KL)
    stage: str | None = None  # the pipeline stage (its PipelineConfig section) it runs as
    loss_option: bool = False  # `--loss NAME` on the command line, short for loss.name=NAME

    def config_class(self) -> type[RecipeConfig]:
        """The config class, imported now."""
        return getattr(importlib.import_module(self.module), self.config)

    def run_function(self) -> RunFunction:
        """``run(config, resume) -> RunResult``, imported now."""
        return getattr(importlib.import_module(self.module), self.run)

    def start(self, config: RecipeConfig, resume: bool) -> RunResult:
        """Run the recipe: in this process, or on Ray workers when ``config.distributed``
        asks for more than one process (each training rank runs the same run function)."""
        if config.distributed.enabled:
            from rlhf.distributed.launch import launch

            return launch(self.module, self.run, config, resume)
        return self.run_function()(config, resume)

    def preset_file(self, preset: str) -> Path:
        """``presets/<name>_<preset>.yaml`` (a ConfigError naming the presets there if none)."""
        from rlhf.config import preset_path

        return preset_path(self.name, preset)


# In `rlhf --help` order.
RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "sft", "rlhf.recipes.sft", "SFTConfig", "run_sft",
        "Supervised fine-tuning on demonstrations (loss on completion tokens only).",
        stage="sft",
    ),
    Recipe(
        "pretrain", "rlhf.recipes.pretrain", "PretrainConfig", "run_pretrain",
        "Pretrain a (tiny) causal LM on raw text, from scratch or further.",
        stage="pretrain",
    ),
    Recipe(
        "rm", "rlhf.recipes.reward_model", "RewardModelConfig", "run_reward_model",
        "Train a reward model (Bradley-Terry) on preference pairs, rankings or ratings.",
        stage="reward_model",
    ),
    Recipe(
        "pm", "rlhf.recipes.preference_model", "PreferenceModelConfig", "run_preference_model",
        "Train a pairwise preference model P(y ≻ y′ | x) on preference pairs (both orders).",
        stage="preference_model",
    ),
    Recipe(
        "prm", "rlhf.recipes.prm", "PRMConfig", "run_prm",
        "Train a process reward model: P(step correct) at every step of a solution, a "
        "per-step binary loss on step-level labels.",
        stage="prm",
    ),
    Recipe(
        "raft", "rlhf.recipes.raft", "RAFTConfig", "run_raft",
        "RAFT: rounds of sample N per prompt, keep the best by reward, fine-tune on them.",
    ),
    Recipe(
        "dpo", "rlhf.recipes.dpo", "DPOConfig", "run_dpo",
        "Offline preference optimisation on pairs: DPO, IPO, hinge, SimPO, ORPO, ... "
        "(--loss NAME).",
        stage="dpo", loss_option=True,
    ),
    Recipe(
        "kto", "rlhf.recipes.kto", "KTOConfig", "run_kto",
        "KTO on unpaired thumbs up/down (preference pairs are split into thumbs).",
    ),
    Recipe(
        "grpo", "rlhf.recipes.grpo", "GRPOConfig", "run_grpo",
        "GRPO: online RL with group-normalised rewards of K samples per prompt, KL as a loss "
        "term.",
        online=True, stage="grpo",
    ),
    Recipe(
        "rloo", "rlhf.recipes.rloo", "RLOOConfig", "run_rloo",
        "RLOO: online REINFORCE with a leave-one-out baseline over K samples per prompt.",
        online=True,
    ),
    Recipe(
        "reinforce", "rlhf.recipes.reinforce", "ReinforceConfig", "run_reinforce",
        "REINFORCE: online policy gradient with a moving-average reward baseline.",
        online=True,
    ),
    Recipe(
        "remax", "rlhf.recipes.remax", "ReMaxConfig", "run_remax",
        "ReMax: online REINFORCE with the greedy response's reward as the baseline.",
        online=True,
    ),
    Recipe(
        "ppo", "rlhf.recipes.ppo", "PPOConfig", "run_ppo",
        "PPO: online RL with a learned critic (GAE), the KL to the reference in the reward.",
        online=True, stage="ppo",
    ),
    Recipe(
        "dapo", "rlhf.recipes.dapo", "DAPOConfig", "run_dapo",
        "DAPO: GRPO with clip-higher, dynamic sampling, a token-level loss and overlong "
        "shaping.",
        online=True,
    ),
    Recipe(
        "gspo", "rlhf.recipes.gspo", "GSPOConfig", "run_gspo",
        "GSPO: GRPO's advantages with a sequence-level, length-normalised importance ratio.",
        online=True,
    ),
    Recipe(
        "reinforce-pp", "rlhf.recipes.reinforce_pp", "ReinforcePPConfig", "run_reinforce_pp",
        "REINFORCE++: advantages normalised over the global batch, k2 KL in the loss.",
        online=True,
    ),
    Recipe(
        "online-dpo", "rlhf.recipes.online_dpo", "OnlineDPOConfig", "run_online_dpo",
        "Online DPO: any DPO-family loss on pairs of the policy's own samples, ordered by a "
        "reward or by annotators.",
        online=True, loss_option=True, stage="online_dpo",
    ),
    Recipe(
        "iterative-dpo", "rlhf.recipes.iterative_dpo", "IterativeDPOConfig", "run_iterative_dpo",
        "Iterative DPO: rounds of sample K → label best vs worst → DPO from the previous "
        "round's policy.",
        loss_option=True,
    ),
    Recipe(
        "sppo", "rlhf.recipes.sppo", "SPPOConfig", "run_sppo",
        "SPPO: self-play against a pairwise preference; log-ratios regressed on win rates.",
        online=True, stage="sppo",
    ),
    Recipe(
        "nash-md", "rlhf.recipes.nash_md", "NashMDConfig", "run_nash_md",
        "Nash-MD: policy gradient on P(y ≻ y′) against the policy–reference geometric "
        "mixture.",
        online=True, stage="nash_md",
    ),
)  # fmt: skip


def recipe(name: str) -> Recipe:
    """The recipe run as ``rlhf <name>`` (a ValueError naming the known ones if none)."""
    for entry in RECIPES:
        if entry.name == name:
            return entry
    raise ValueError(f"no recipe {name!r} (recipes: {', '.join(r.name for r in RECIPES)})")


def stage_recipe(stage: str) -> Recipe:
    """The recipe the pipeline runs as stage ``stage`` (its PipelineConfig section)."""
    for entry in RECIPES:
        if entry.stage == stage:
            return entry
    stages = ", ".join(r.stage for r in RECIPES if r.stage)
    raise ValueError(f"no recipe runs as pipeline stage {stage!r} (stages: {stages})")


def _set_default(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data[a][b]... = value`` unless the key is already set."""
    *parents, last = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data.setdefault(last, value)


def stage_config(
    cls: type[C], name: str, section: Mapping[str, Any], defaults: Mapping[str, Any]
) -> C:
    """A recipe's config inside a larger run (the pipeline's stages, the loop's rounds):
    ``section`` (a partial config), with ``defaults`` (dotted keys) where it is silent,
    validated now; errors name the stage ``name``."""
    from rlhf.config import _deep_merge, validate_config

    data = _deep_merge({}, dict(section))
    for dotted, value in defaults.items():
        _set_default(data, dotted, value)
    return validate_config(cls, data, f"stage `{name}`")


def online_recipes() -> list[Recipe]:
    """The recipes that sample from the policy they train."""
    return [entry for entry in RECIPES if entry.online]


def config_class(name: str) -> type[RecipeConfig]:
    """``rlhf <name>``'s config class, imported now."""
    return recipe(name).config_class()
