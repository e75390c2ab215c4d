"""What the round-based recipes share (RAFT, iterative DPO): rounds of sample → select →
train on a policy held in memory, with the run's progress in a state file.

* :class:`RoundsConfig`: the starting policy, the prompts (with an optional ground-truth
  column for verifiable rewards), the reward and the sampling;
* :func:`start_rounds`: the run folder (refusing to clobber a run, or finding the one to
  resume), the config recorded, the prompts read, and the state: a fresh one, or the state
  file's.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from rlhf.data.records import Text
from rlhf.recipes.common import ModelConfig, RecipeConfig, record_config
from rlhf.recipes.lm import InitSFTConfig
from rlhf.rewards.spec import RewardSpec
from rlhf.rollout.candidates import load_prompts_and_answers
from rlhf.rollout.types import SamplingConfig


class RoundsConfig(RecipeConfig):
    """Settings every round-based recipe shares; each adds its own section."""

    model: ModelConfig = Field(description="The starting policy (or a tiny one for init_sft).")
    init_sft: InitSFTConfig | None = Field(
        None, description="Fine-tune the starting model on demonstrations first."
    )
    prompts: str = Field(
        description="Prompts: any file with a prompt field (or conversations), or builtin:NAME."
    )
    prompt_columns: dict[str, str] = Field(
        default_factory=dict, description="Map our field names to the prompt file's columns."
    )
    answer_field: str | None = Field(
        None,
        description="Column of the prompt file holding each prompt's ground truth (e.g. "
        "answer), passed to the reward: verifiable rewards such as rule=gsm8k need it.",
    )
    reward: RewardSpec = Field(
        description="{model: PATH}, {rule: NAME}, a judge or a composite (docs/rewards.md)."
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="Sampling.")

    @model_validator(mode="after")
    def _tiny_needs_init_sft(self) -> RoundsConfig:
        if self.model.tiny is not None and self.init_sft is None:
            raise ValueError("model.tiny starts from random weights: set init_sft to train it")
        return self


@dataclass
class RoundsStart:
    out: Path
    prompts: list[Text]
    metadata: Mapping[Text, Mapping[str, Any]] | None  # prompt -> its ground truth
    state: dict[str, Any]  # the state file's on --resume, else ``fresh``; updated as it runs
    state_file: str

    def save_state(self) -> None:
        """Write :attr:`state` to ``<out>/<state_file>`` (after each completed round)."""
        (self.out / self.state_file).write_text(json.dumps(self.state, indent=2), encoding="utf-8")


def start_rounds(
    config: RoundsConfig, resume: bool, state_file: str, name: str, fresh: dict[str, Any]
) -> RoundsStart:
    """Prepare a run of recipe ``name`` whose progress lives in ``<out>/<state_file>``: a
    ValueError on --resume without one, or without --resume and overwrite over one; the
    config recorded; a fresh run's old ``rounds/`` removed."""
    out = Path(config.out)
    has_run = (out / state_file).exists()
    if resume and not has_run:
        raise ValueError(f"--resume: no {name} run in {out} ({state_file} is missing)")
    if not resume and has_run and not config.overwrite:
        raise ValueError(
            f"{out} already holds a {name} run; pass --resume to continue it, overwrite=true "
            "to start again there, or choose another out="
        )
    out.mkdir(parents=True, exist_ok=True)
    record_config(config, out, resume)
    prompts, answers = load_prompts_and_answers(
        config.prompts, config.answer_field, columns=config.prompt_columns or None,
        option="answer_field",
    )  # fmt: skip
    metadata = None if answers is None else dict(zip(prompts, answers, strict=True))
    if resume:
        state = json.loads((out / state_file).read_text(encoding="utf-8"))
    else:
        shutil.rmtree(out / "rounds", ignore_errors=True)
        state = dict(fresh)
    return RoundsStart(out, list(prompts), metadata, state, state_file)
