"""``rlhf loop``: RLHF as a loop through the feedback app, round after round::

    policy → sample K responses per prompt → choose what to label (active selection)
        → a campaign in the feedback app → labels (people and/or annotator bots, over HTTP)
        → export → reward model (warm-started from the last round's) → policy update
        (DPO on the round's labels, or PPO / GRPO / online DPO against the reward model)
        → evaluation → the next round, until the rounds or the label budget are spent

The loop serves the feedback app itself (``serve.host``, ``serve.port``): people may label a
round's campaign in their browser while the bots (``bots.count``, simulated annotators of the
embedded world that log in and label through the app's HTTP API, :mod:`rlhf.sim.bots`) do.
The app's database is the source of truth: each round is a row there (``loops``,
``loop_rounds``) whose status moves waiting → sampling → labelling → training → done, and a
round's campaign is made in the same transaction that marks it labelling. A loop stopped at
any moment — Ctrl-C, a crash, SIGKILL — continues with ``--resume``: a round without its
campaign is sampled again (the same seeded samples), a round with one is labelled on (every
label already acknowledged is kept, none asked for twice), a round being trained trains
again from its exported labels.

Active selection (``selection.strategy``, :mod:`rlhf.eval.active`): each round samples
``selection.pool`` times more prompts than it labels and sends people the items with the
highest score — the reward models' disagreement on the item's most informative pair
(``uncertainty``; an ensemble of ``reward_model_ensemble`` members, BALD), the policy's
divergence from the initial policy (``divergence``), or a seeded random choice (``random``).
The first round has no reward model and no divergence yet: it picks at random.

Model against model (``compare_items``): from round 2 on, each campaign also holds pairs
whose two replies come from the policy entering the round and the one before it, tagged with
their checkpoints (annotators never see which is which, and the app shows each in a random
order); their labels give the human win rate of each round's policy over the previous one and
Bradley–Terry / Elo ratings of every checkpoint (:mod:`rlhf.eval.ratings`). They are not
training data.

Output (``out``): ``init/`` (pretraining and SFT when the loop starts from a tiny model),
``rounds/round-R/`` (``candidates.jsonl``: the sampled pool and each item's selection score;
``labels.jsonl``: the round's export; ``reward_model-M/``; ``policy/``; ``eval.json``),
``feedback.db`` (the app's database unless ``serve.db`` names another), ``rounds.jsonl``
(one summary per round) and ``report.md`` with ``loop.png``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from rlhf.config import StrictModel
from rlhf.data.records import Text
from rlhf.eval.active import Strategy, pair_uncertainty, select, sequence_divergence
from rlhf.recipes.common import ModelConfig, RecipeConfig, round_prompts
from rlhf.recipes.registry import stage_config, stage_recipe
from rlhf.rewards.spec import RewardSpec
from rlhf.rollout.types import EngineChoice

logger = logging.getLogger("rlhf")
POLICY_ALGORITHMS = ("dpo", "ppo", "grpo", "online_dpo", "none")
DONE_MARK = ".loop-done"  # written in a stage's folder once it has finished


# ------------------------------------------------------------------------------ config


class LoopSampling(EngineChoice):
    """Sampling each round's candidates (``engine``: hf or vllm)."""

    samples_per_prompt: int = Field(4, ge=2, le=8, description="K responses per prompt.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    max_new_tokens: int = Field(48, ge=1, description="Response tokens at most.")
    batch_size: int = Field(64, ge=1, description="Sequences sampled together.")


class LoopSelection(StrictModel):
    strategy: Strategy = Field(
        "uncertainty",
        description="What people label next: uncertainty (the reward models' disagreement), "
        "divergence (the policy's from the initial policy) or random.",
    )
    pool: int = Field(
        4, ge=1, description="Prompts sampled per item labelled: the pool selection picks from."
    )


class LoopBots(StrictModel):
    """Simulated annotators of the embedded world, labelling through the app's HTTP API."""

    count: int = Field(3, ge=0, le=50, description="Bots (0: people label every round).")
    temperature: float = Field(0.05, gt=0, description="Bradley–Terry noise on the gold reward.")
    careless: float = Field(0.1, ge=0, le=1, description="Share of their labels that are coins.")
    length_bias: float = Field(0.0, description="Utility per content sentence (likes length).")
    position_bias: float = Field(0.0, description="Lean to the reply shown first, gold units.")
    speed: float = Field(0.0, ge=0, description="Seconds per label, on average.")


class LoopServe(StrictModel):
    db: str | None = Field(
        None, description="The feedback database (a file or URL; default: <out>/feedback.db)."
    )
    host: str = Field("127.0.0.1", description="Where the app listens (0.0.0.0: every address).")
    port: int = Field(0, ge=0, le=65535, description="Its port (0: a free one, printed).")
    start_rounds: Literal["auto", "admin"] = Field(
        "auto", description="auto: each round starts at once; admin: when an admin starts it."
    )
    labels_per_item: int = Field(1, ge=1, le=50, description="Annotators per item (the k).")
    round_timeout: float = Field(
        0.0, ge=0, description="Seconds to wait for a round's labels (0: until all are in)."
    )
    guidelines: str = Field(
        "Pick the reply that answers the request better.",
        description="What annotators read on each round's campaign.",
    )


class LoopEval(StrictModel):
    prompts: str = Field(
        "builtin:world-prompts?n=64&seed=99&split=eval", description="Evaluation prompts."
    )
    count: int = Field(64, ge=1, description="Evaluation prompts used at most.")
    samples_per_prompt: int = Field(2, ge=1, description="Samples per evaluation prompt.")
    gold: RewardSpec | None = Field(
        default_factory=lambda: RewardSpec(rule="world_gold"),
        description="The gold reward (the embedded world's; null: none known).",
    )


class LoopConfig(StrictModel):
    """``rlhf loop``: rounds of sample → label in the feedback app → reward model → policy."""

    out: str = Field("runs/loop", description="Output folder (init/, rounds/, the report).")
    seed: int = Field(0, description="Seed of sampling, selection, bots and every stage.")
    overwrite: bool = Field(False, description="Allow starting again in a folder with a loop.")
    progress: bool = Field(True, description="Show progress bars.")
    name: str | None = Field(
        None, description="The loop's name in the app (default: the out folder's name)."
    )
    model: ModelConfig = Field(description="The starting policy, or a tiny one from scratch.")
    pretrain: dict[str, Any] | None = Field(
        None, description="Pretraining first (a partial `rlhf pretrain` config; null: skip)."
    )
    sft: dict[str, Any] | None = Field(
        None, description="Supervised fine-tuning first (a partial `rlhf sft` config)."
    )
    prompts: str = Field(
        "builtin:world-prompts?n=512&seed=1&split=train", description="Prompts to sample for."
    )
    rounds: int = Field(4, ge=1, description="Rounds at most.")
    labels_per_round: int = Field(64, ge=1, description="Items people label each round.")
    max_labels: int | None = Field(
        None, ge=1, description="Stop once this many labels are spent (null: rounds decide)."
    )
    compare_items: int = Field(
        0, ge=0, description="Model-against-model items per round (from round 2): the policy "
        "entering the round against the one before it.",
    )  # fmt: skip
    sampling: LoopSampling = Field(default_factory=LoopSampling, description="Sampling.")
    selection: LoopSelection = Field(default_factory=LoopSelection, description="Selection.")
    bots: LoopBots = Field(default_factory=LoopBots, description="Annotator bots.")
    serve: LoopServe = Field(default_factory=LoopServe, description="The feedback app.")
    reward_model: dict[str, Any] = Field(
        default_factory=dict, description="Each round's reward model (a partial `rlhf rm`)."
    )
    reward_model_ensemble: int = Field(
        1, ge=1, le=8, description="Reward models per round, seeds apart (uncertainty: BALD)."
    )
    reward_model_data: Literal["all", "round"] = Field(
        "all", description="Train each round's reward model on every label so far, or the round's."
    )
    policy_algorithm: Literal["dpo", "ppo", "grpo", "online_dpo", "none"] = Field(
        "dpo", description="The policy update: DPO on the round's labels, an online recipe "
        "against the round's reward model, or none (the reward model only).",
    )  # fmt: skip
    policy: dict[str, Any] = Field(
        default_factory=dict, description="The policy update's config (a partial one)."
    )
    policy_reference: Literal["initial", "previous"] | None = Field(
        None,
        description="π_ref of each round's policy update: the initial policy or the previous "
        "round's (default: previous for DPO, i.e. iterative DPO; initial for the online "
        "recipes, whose KL to a moving reference would compound round after round).",
    )
    eval: LoopEval = Field(default_factory=LoopEval, description="Evaluation after each round.")

    @model_validator(mode="after")
    def _stages_valid(self) -> LoopConfig:
        if self.model.tiny is not None and self.pretrain is None:
            raise ValueError("model.tiny starts from random weights: set `pretrain`")
        paths = LoopPaths(Path(self.out))
        stage_configs_of_round(self, paths, 1)  # every stage's config must validate now
        return self

    @property
    def loop_name(self) -> str:
        return (self.name or Path(self.out).resolve().name).strip()


# ------------------------------------------------------------------------------ stages


@dataclass(frozen=True)
class LoopPaths:
    out: Path

    def init(self, stage: str) -> Path:
        return self.out / "init" / stage

    def round(self, number: int) -> Path:
        return self.out / "rounds" / f"round-{number}"

    def labels(self, number: int) -> Path:
        return self.round(number) / "labels.jsonl"

    def preferences(self, number: int) -> Path:
        """The round's training labels: its export less the model-against-model items."""
        return self.round(number) / "preferences.jsonl"

    def reward_model(self, number: int, member: int) -> Path:
        return self.round(number) / f"reward_model-{member}"

    def policy(self, number: int) -> Path:
        return self.round(number) / "policy"


def initial_policy(config: LoopConfig, paths: LoopPaths) -> str:
    if config.sft is not None:
        return str(paths.init("sft") / "model")
    if config.pretrain is not None:
        return str(paths.init("pretrain") / "model")
    return str(config.model.path)


def init_stages(config: LoopConfig, paths: LoopPaths) -> list[tuple[str, RecipeConfig]]:
    """Pretraining and SFT before the first round, when asked for."""
    common = {"train.seed": config.seed, "progress": config.progress, "tensorboard": False}
    stages: list[tuple[str, RecipeConfig]] = []
    base = config.model.path or ""
    if config.pretrain is not None:
        model = config.model.model_dump(exclude_none=True)
        cls = stage_recipe("pretrain").config_class()
        defaults = {"out": str(paths.init("pretrain")), "model": model, **common}
        stages.append(("pretrain", stage_config(cls, "pretrain", config.pretrain, defaults)))
        base = str(paths.init("pretrain") / "model")
    if config.sft is not None:
        cls = stage_recipe("sft").config_class()
        defaults = {"out": str(paths.init("sft")), "model.path": base, **common}
        stages.append(("sft", stage_config(cls, "sft", config.sft, defaults)))
    return stages


def reward_models_after(config: LoopConfig, paths: LoopPaths, number: int) -> list[str]:
    """The ensemble's model folders after round ``number`` (none after round 0)."""
    if number == 0:
        return []
    return [
        str(paths.reward_model(number, member) / "model")
        for member in range(config.reward_model_ensemble)
    ]


def policy_of_round(config: LoopConfig, paths: LoopPaths, number: int) -> str:
    """The policy after round ``number`` (0: the initial one)."""
    if number == 0 or config.policy_algorithm == "none":
        return initial_policy(config, paths)
    return str(paths.policy(number) / "model")


def stage_configs_of_round(
    config: LoopConfig, paths: LoopPaths, number: int
) -> tuple[list[RecipeConfig], RecipeConfig | None]:
    """Round ``number``'s reward models (one per ensemble member, each warm-started from its
    own member of the round before) and its policy update."""
    common = {"progress": config.progress, "tensorboard": False}
    start = policy_of_round(config, paths, number - 1)
    rm_class = stage_recipe("reward_model").config_class()
    members = []
    for member in range(config.reward_model_ensemble):
        warm = str(paths.reward_model(number - 1, member) / "model") if number > 1 else start
        members.append(
            stage_config(
                rm_class,
                f"reward_model (round {number}, member {member})",
                config.reward_model,
                {
                    "out": str(paths.reward_model(number, member)),
                    "model.path": warm,
                    "data.train": str(paths.round(number) / "reward_model_labels.jsonl"),
                    "data.eval_fraction": 0.0,
                    "train.seed": config.seed * 1_000 + member,
                    **common,
                },
            )
        )
    if config.policy_algorithm == "none":
        return members, None
    gold = config.eval.gold.model_dump(exclude_none=True) if config.eval.gold else None
    defaults: dict[str, Any] = {
        "out": str(paths.policy(number)), "model.path": start, "train.seed": config.seed,
        **common,
    }  # fmt: skip
    if config.policy_algorithm == "dpo":
        defaults |= {"data.train": str(paths.preferences(number)), "data.eval_fraction": 0.0}
    else:  # an online recipe against the round's reward model (the ensemble's first member)
        defaults |= {
            "data.prompts": config.prompts,
            "data.eval_prompts": config.eval.prompts,
            "reward.model": str(paths.reward_model(number, 0) / "model"),
        }
    if gold is not None:
        defaults["eval.gold_reward"] = gold
    anchor = config.policy_reference or (
        "previous" if config.policy_algorithm == "dpo" else "initial"
    )
    if anchor == "initial":  # else the recipe's default: its starting weights, the last policy
        defaults["reference.path"] = initial_policy(config, paths)
    cls = stage_recipe(config.policy_algorithm).config_class()
    policy = stage_config(
        cls, f"{config.policy_algorithm} (round {number})", config.policy, defaults
    )
    return members, policy


def run_stage(name: str, stage: str, run_config: RecipeConfig) -> Path:
    """Run a recipe once: a folder that holds :data:`DONE_MARK` has run already (resume)."""
    out = Path(run_config.out)
    if (out / DONE_MARK).exists():
        return out
    logger.info("loop: %s", name)
    run_config.overwrite = True
    stage_recipe(stage).start(run_config, False)
    (out / DONE_MARK).write_text("", encoding="utf-8")
    return out


# ------------------------------------------------------------------------------ sampling


@dataclass
class Candidate:
    """One prompt of a round's pool, its K responses and what selection made of it."""

    prompt: Text
    responses: list[str]
    pair: tuple[int, int]  # the two responses people would compare
    score: float  # the selection score (0 for random)
    divergence: float


def sample_pool(
    config: LoopConfig,
    paths: LoopPaths,
    number: int,
    prompts: Sequence[Text],
    reward_models: Sequence[str],
) -> list[Candidate]:
    """Sample the round's pool from the policy entering it and score every item."""
    from rlhf.models.load import load_model, load_tokenizer
    from rlhf.models.reference import ReferenceModel
    from rlhf.rollout.factory import close_engine, load_engine_for
    from rlhf.rollout.measure import reference_logps
    from rlhf.rollout.types import SamplingParams

    settings = config.sampling
    params = SamplingParams(
        settings.max_new_tokens,
        temperature=settings.temperature,
        num_samples=settings.samples_per_prompt,
        seed=config.seed * 1_000_003 + number,
    )
    engine = load_engine_for(
        settings, policy_of_round(config, paths, number - 1), batch_size=settings.batch_size
    )
    try:
        batch = engine.generate(list(prompts), params)
    finally:
        close_engine(engine)
    k = settings.samples_per_prompt
    texts = batch.response_texts
    divergence = torch.zeros(len(prompts), dtype=torch.float64)
    if config.selection.strategy == "divergence" and number > 1:
        initial = initial_policy(config, paths)
        reference = ReferenceModel.frozen(load_model(initial, tokenizer=load_tokenizer(initial)))
        ref = reference_logps(reference, batch, params.logp_temperature, settings.batch_size)
        assert batch.logps is not None
        for index in range(len(prompts)):
            rows = slice(index * k, (index + 1) * k)
            divergence[index] = sequence_divergence(
                batch.logps[rows], ref[rows], batch.response_mask[rows]
            )
    scores = reward_scores(reward_models, prompts, texts, k)  # [P, M, K] or None
    draw = random.Random(f"loop-pairs-{config.seed}-{number}")
    pool = []
    for index, prompt in enumerate(prompts):
        responses = list(texts[index * k : (index + 1) * k])
        # empty replies teach a reward model nothing and training data refuses them
        distinct = [
            i for i in range(k) if responses[i].strip() and responses[i] not in responses[:i]
        ]
        if len(distinct) < 2:
            continue  # nothing to compare
        first, second = sorted(draw.sample(distinct, 2))
        pair, score = (first, second), 0.0
        if scores is not None:
            best = pair_uncertainty(scores[index][:, distinct])
            pair = (distinct[best.first], distinct[best.second])
            score = best.score
        if config.selection.strategy == "divergence":
            score = float(divergence[index])
        pool.append(Candidate(prompt, responses, pair, score, float(divergence[index])))
    return pool


def reward_scores(
    reward_models: Sequence[str], prompts: Sequence[Text], texts: Sequence[str], k: int
) -> torch.Tensor | None:
    """[P, M, K] every reward model's score of every sampled response (None without any)."""
    from rlhf.rewards.base import call_reward
    from rlhf.rewards.spec import build_reward

    if not reward_models:
        return None
    repeated = [prompt for prompt in prompts for _ in range(k)]
    members = []
    for path in reward_models:
        reward = build_reward(RewardSpec(model=path))
        members.append(call_reward(reward, repeated, list(texts)).double().view(len(prompts), k))
    return torch.stack(members, dim=1)


def comparison_items(
    config: LoopConfig, paths: LoopPaths, number: int, prompts: Sequence[Text]
) -> list[tuple[Text, list[str], list[str]]]:
    """(prompt, [reply, reply], [checkpoint, checkpoint]) pairs of the policy entering round
    ``number`` and the one before it, one sample each (seeded), identical replies left out."""
    from rlhf.rollout.factory import close_engine, load_engine_for
    from rlhf.rollout.types import SamplingParams

    settings = config.sampling
    params = SamplingParams(
        settings.max_new_tokens, temperature=settings.temperature, num_samples=1,
        seed=config.seed * 7_919 + number, return_logps=False,
    )  # fmt: skip
    replies = {}
    for previous in (number - 1, number - 2):
        engine = load_engine_for(
            settings, policy_of_round(config, paths, previous), batch_size=settings.batch_size
        )
        try:
            replies[previous] = engine.generate(list(prompts), params).response_texts
        finally:
            close_engine(engine)
    names = [checkpoint_name(number - 1), checkpoint_name(number - 2)]
    return [
        (prompt, [replies[number - 1][i], replies[number - 2][i]], names)
        for i, prompt in enumerate(prompts)
        if replies[number - 1][i] != replies[number - 2][i]
        and replies[number - 1][i].strip()
        and replies[number - 2][i].strip()
    ]


def checkpoint_name(number: int) -> str:
    return "initial" if number == 0 else f"round-{number}"


# ------------------------------------------------------------------------------ the app


def bot_annotators(config: LoopConfig, served: Any, loop_name: str) -> list[Any]:
    """The bots' accounts (made, or given a new token on --resume) and the bots, logged in.
    An account of a bot's name that is an admin's or deactivated is an error, not taken over
    (as :func:`rlhf.sim.bots.bot_accounts` refuses it through the admin API)."""
    from rlhf.config import ConfigError
    from rlhf.feedback.db import User
    from rlhf.feedback.service import create_user, rotate_token
    from rlhf.sim.annotators import SimulatedAnnotator
    from rlhf.sim.bots import AnnotatorBot

    settings = config.bots
    names = [f"{loop_name[:60]}-bot-{index}" for index in range(1, settings.count + 1)]

    def accounts(session: Any) -> list[tuple[str, str]]:
        from sqlalchemy import select

        made = []
        for name in names:
            user = session.scalar(select(User).where(User.name == name))
            if user is None:
                made.append((name, create_user(session, name, "annotator")[1]))
                continue
            if user.role != "annotator":
                raise ConfigError(
                    f"bots: the account {name!r} is an {user.role}'s, not a bot's; choose "
                    "another loop_name"
                )
            if not user.active:
                raise ConfigError(
                    f"bots: the account {name!r} is deactivated; reactivate it on the admin "
                    "page, or set a smaller bots.count"
                )
            made.append((name, rotate_token(session, user)))
        return made

    bots = []
    for index, (name, token) in enumerate(served.state.transaction(accounts), start=1):
        annotator = SimulatedAnnotator(
            settings.temperature, length_bias=settings.length_bias, careless=settings.careless,
            position_bias=settings.position_bias, seed=f"{config.seed}-loop-bot-{index}",
        )  # fmt: skip
        bots.append(
            AnnotatorBot(name, token, annotator, served.url, speed=settings.speed, seed=index)
        )
    return bots


def make_campaign(
    served: Any,
    loop_id: int,
    number: int,
    campaign_name: str,
    config: LoopConfig,
    chosen: Sequence[Candidate],
    compared: Sequence[tuple[Text, list[str], list[str]]],
) -> int:
    """The round's campaign, and the round marked labelling, in one transaction."""
    from rlhf.feedback.campaigns import NewItem
    from rlhf.feedback.db import Loop
    from rlhf.feedback.service import CampaignSpec, create_campaign
    from rlhf.feedback.service.loops import loop_round, set_round

    items = [
        NewItem(
            item.prompt,
            [item.responses[item.pair[0]], item.responses[item.pair[1]]],
            source={"round": number, "kind": "train", "score": item.score},
        )
        for item in chosen
    ]
    items += [
        NewItem(prompt, replies, source={"round": number, "kind": "compare", "models": models})
        for prompt, replies, models in compared
    ]
    spec = CampaignSpec(
        campaign_name, "pairwise", guidelines=config.serve.guidelines,
        k=config.serve.labels_per_item,
    )  # fmt: skip

    def work(session: Any) -> int:
        campaign = create_campaign(session, spec, items)
        session.flush()
        entry = loop_round(session, session.get(Loop, loop_id), number)
        set_round(entry, "labelling", campaign_id=campaign.id)
        return campaign.id

    return served.state.transaction(work)


def label_round(config: LoopConfig, served: Any, bots: Sequence[Any], campaign_id: int) -> None:
    """Until every item has its labels (or ``serve.round_timeout``): the bots label, and
    people may too; a person's unfinished item returns to the pool when it expires."""
    from rlhf.feedback.service import get_campaign
    from rlhf.feedback.service.stats import campaign_stats
    from rlhf.sim.bots import run_bots

    timeout = config.serve.round_timeout
    deadline = time.monotonic() + timeout if timeout else None
    said = False
    while True:
        if bots:
            stop = threading.Event()  # set by run_bots on Ctrl-C, which stops the loop too
            for report in run_bots(bots, campaign_id, stop=stop):
                for error in report.errors:
                    logger.warning("bot %s: %s", report.bot, error)
            if stop.is_set():
                raise KeyboardInterrupt
        stats = served.state.transaction(
            lambda session: campaign_stats(session, get_campaign(session, campaign_id))
        )
        if stats["complete_items"] >= stats["items"]:
            return
        if deadline is not None and time.monotonic() > deadline:
            logger.warning(
                "round timeout: %d of %d items labelled; training on those",
                stats["complete_items"], stats["items"],
            )  # fmt: skip
            return
        if not said:
            logger.info(
                "waiting for people: %d of %d items labelled (%s)",
                stats["complete_items"], stats["items"], served.url,
            )  # fmt: skip
            said = True
        time.sleep(1.0)


def export_round(served: Any, campaign_id: int, path: Path) -> list[dict[str, Any]]:
    """Close the round's campaign and write its labels (every one stored, in a fixed order)."""
    from rlhf.feedback.service import export_rows, get_campaign
    from rlhf.feedback.service.campaigns import set_status

    def work(session: Any) -> list[dict[str, Any]]:
        campaign = get_campaign(session, campaign_id)
        set_status(session, campaign, "closed")
        return list(export_rows(session, campaign))

    rows = served.state.transaction(work)
    write_jsonl(path, rows)
    return rows


def write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows whole or not at all (a file replaced, never half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".partial")
    with partial.open("w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.replace(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# ------------------------------------------------------------------------------ measuring


def ensemble_margins(
    reward_models: Sequence[str],
    prompts: Sequence[Text],
    first: Sequence[str],
    second: Sequence[str],
) -> torch.Tensor:
    """[N] the reward models' mean score of ``first[i]`` less that of ``second[i]``."""
    scores = reward_scores(reward_models, [*prompts, *prompts], [*first, *second], 1)
    assert scores is not None
    mean = scores.mean(dim=(1, 2))
    return mean[: len(prompts)] - mean[len(prompts) :]


def fresh_accuracy(reward_models: Sequence[str], rows: Sequence[dict[str, Any]]) -> float | None:
    """How often the last round's reward models (their mean score) already agreed with this
    round's new labels: accuracy on labels they never saw, a tie counting ½ (None in round
    1)."""
    if not reward_models or not rows:
        return None
    margins = ensemble_margins(
        reward_models, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
        [r["rejected"] for r in rows],
    )  # fmt: skip
    return float(((margins > 0).double() + 0.5 * (margins == 0).double()).mean())


def evaluate_policy(config: LoopConfig, paths: LoopPaths, number: int) -> dict[str, Any]:
    """The policy after round ``number`` on the fixed evaluation prompts (the same seed every
    round): gold (where known), the round's reward model, KL to the initial policy."""
    from rlhf.eval.policies import sample_policy
    from rlhf.eval.stats import mean_and_se
    from rlhf.models.load import load_model, load_tokenizer
    from rlhf.models.reference import ReferenceModel
    from rlhf.rewards.spec import build_reward
    from rlhf.rollout.candidates import load_prompts
    from rlhf.rollout.factory import close_engine, load_engine_for
    from rlhf.rollout.types import SamplingParams

    saved = paths.round(number) / "eval.json"
    if saved.exists():
        return json.loads(saved.read_text(encoding="utf-8"))
    prompts = load_prompts(config.eval.prompts, limit=config.eval.count)
    params = SamplingParams(
        config.sampling.max_new_tokens,
        temperature=config.sampling.temperature,
        num_samples=config.eval.samples_per_prompt,
        seed=config.seed + 1,
    )
    gold = build_reward(config.eval.gold) if config.eval.gold else None
    proxy = build_reward(RewardSpec(model=str(paths.reward_model(number, 0) / "model"))) if (
        number > 0
    ) else None  # fmt: skip
    if gold is None and proxy is None:
        return {}  # the initial policy where no gold is known: nothing to measure it by
    initial = initial_policy(config, paths)
    reference = None
    if number > 0:
        reference = ReferenceModel.frozen(load_model(initial, tokenizer=load_tokenizer(initial)))
    engine = load_engine_for(
        config.sampling, policy_of_round(config, paths, number),
        batch_size=config.sampling.batch_size,
    )  # fmt: skip
    try:
        samples = sample_policy(
            engine, prompts, params, gold=gold or proxy, proxy=proxy or gold, reference=reference,
            batch_size=config.sampling.batch_size,
        )  # fmt: skip
    finally:
        close_engine(engine)
    result: dict[str, Any] = {"kl": samples.kl}
    if gold is not None:
        result["gold"], result["gold_se"] = mean_and_se(samples.gold.tolist())
        result["gold_samples"] = samples.gold.tolist()
    if proxy is not None:
        result["proxy"] = float(samples.proxy.mean())
    n = config.eval.samples_per_prompt
    if gold is not None and proxy is not None and n > 1:
        # best-of-n by the round's reward model among the policy's own samples: how much
        # the reward model's choices are worth in gold, on what the policy now writes
        picked = samples.proxy.view(-1, n).argmax(dim=1, keepdim=True)
        chosen = samples.gold.view(-1, n).gather(1, picked).squeeze(1)
        result["best_of_n_gold"], result["best_of_n_gold_se"] = mean_and_se(chosen.tolist())
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result), encoding="utf-8")
    return result


def gold_pair_accuracy(config: LoopConfig, paths: LoopPaths, reward_models: Sequence[str]) -> float:
    """How often the reward models (their mean score) order a fixed set of pairs as the gold
    reward does: two samples of the initial policy for each evaluation prompt, made once
    (``rounds/round-0/gold_pairs.jsonl``), pairs of equal gold left out."""
    from rlhf.rewards.base import call_reward
    from rlhf.rewards.spec import build_reward
    from rlhf.rollout.candidates import load_prompts
    from rlhf.rollout.factory import close_engine, load_engine_for
    from rlhf.rollout.types import SamplingParams

    assert config.eval.gold is not None
    path = paths.round(0) / "gold_pairs.jsonl"
    if not path.exists():
        prompts = load_prompts(config.eval.prompts, limit=config.eval.count)
        params = SamplingParams(
            config.sampling.max_new_tokens, temperature=config.sampling.temperature,
            num_samples=2, seed=config.seed + 2, return_logps=False,
        )  # fmt: skip
        engine = load_engine_for(
            config.sampling, initial_policy(config, paths), batch_size=config.sampling.batch_size
        )
        try:
            texts = engine.generate(prompts, params).response_texts
        finally:
            close_engine(engine)
        repeated = [prompt for prompt in prompts for _ in range(2)]
        gold = call_reward(build_reward(config.eval.gold), repeated, texts).tolist()
        rows = [
            {"prompt": prompts[i], "a": texts[2 * i], "b": texts[2 * i + 1],
             "gold_a": gold[2 * i], "gold_b": gold[2 * i + 1]}
            for i in range(len(prompts))
            if gold[2 * i] != gold[2 * i + 1]
        ]  # fmt: skip
        write_jsonl(path, rows)
    rows = read_jsonl(path)
    if not rows:
        return float("nan")
    margins = ensemble_margins(
        reward_models, [r["prompt"] for r in rows], [r["a"] for r in rows], [r["b"] for r in rows]
    )
    says_a = margins > 0
    gold_a = torch.tensor([row["gold_a"] > row["gold_b"] for row in rows])
    return float((says_a == gold_a).double().mean())


def human_comparisons(paths: LoopPaths, upto: int) -> list[dict[str, Any]]:
    """Every model-against-model label of rounds 1..``upto``."""
    rows = []
    for number in range(1, upto + 1):
        if paths.labels(number).exists():
            rows += [r for r in read_jsonl(paths.labels(number)) if "chosen_model" in r]
    return rows


def summarise_comparisons(rows: Sequence[dict[str, Any]], number: int) -> dict[str, Any]:
    """The human win rate of the policy entering round ``number`` over the one before it,
    and every checkpoint's Bradley–Terry rating (Elo points) from all comparisons so far."""
    from rlhf.eval.ratings import bradley_terry, comparisons_from_rows, win_rates

    out: dict[str, Any] = {}
    comparisons = comparisons_from_rows(rows)
    if not comparisons:
        return out
    table = win_rates(comparisons)
    pair = (checkpoint_name(number - 1), checkpoint_name(number - 2))
    if pair in table:
        out["human_win_rate"] = table[pair].rate
        out["human_win_rate_se"] = table[pair].se
        out["human_win_rate_of"] = f"{pair[0]} over {pair[1]}"
    try:
        ratings = bradley_terry(comparisons, anchor="initial" if any(
            "initial" in (c.model_a, c.model_b) for c in comparisons) else None)  # fmt: skip
    except ValueError as error:  # e.g. the checkpoints are not all connected yet
        out["ratings_note"] = str(error)
        return out
    out["ratings"] = {
        r.model: {"elo": round(r.elo, 1), "elo_se": round(r.elo_se, 1), "games": r.games}
        for r in ratings.ratings
    }
    return out


# ------------------------------------------------------------------------------ the run


@dataclass
class LoopResult:
    out_dir: Path
    rounds: list[dict[str, Any]]  # each done round's summary, in order
    report: Path
    url: str  # where the app was served


class _Loop:
    """One run of the loop; a round's phases are the methods, in order."""

    def __init__(self, config: LoopConfig, served: Any, loop_id: int, bots: list[Any]) -> None:
        from rlhf.rollout.candidates import load_prompts

        self.config, self.served, self.loop_id, self.bots = config, served, loop_id, bots
        self.paths = LoopPaths(Path(config.out))
        self.prompts = load_prompts(config.prompts)

    def db(self, work: Callable[[Any], Any]) -> Any:
        return self.served.state.transaction(work)

    def round_entry(self, number: int, create: str | None = None) -> tuple[str, dict, int | None]:
        """(status, summary, campaign id) of round ``number``; made with ``create`` if absent."""
        from rlhf.feedback.db import Loop
        from rlhf.feedback.service.loops import loop_round, open_round

        def work(session: Any) -> tuple[str, dict, int | None] | None:
            loop = session.get(Loop, self.loop_id)
            entry = loop_round(session, loop, number)
            if entry is None and create is not None:
                entry = open_round(session, loop, number, create)
            if entry is None:
                return None
            return entry.status, dict(entry.summary), entry.campaign_id

        return self.db(work)

    def set_status(self, number: int, status: str, summary: dict | None = None) -> None:
        from rlhf.feedback.db import Loop
        from rlhf.feedback.service.loops import loop_round, set_round

        def work(session: Any) -> None:
            entry = loop_round(session, session.get(Loop, self.loop_id), number)
            set_round(entry, status, summary=summary)

        self.db(work)

    def labels_spent(self, before: int) -> int:
        """Labels stored in the campaigns of rounds 1..``before``."""
        from sqlalchemy import func, select

        from rlhf.feedback.db import Label, LoopRound

        def work(session: Any) -> int:
            campaigns = select(LoopRound.campaign_id).where(
                LoopRound.loop_id == self.loop_id, LoopRound.number <= before
            )
            query = select(func.count()).where(Label.campaign_id.in_(campaigns))
            return int(session.scalar(query) or 0)

        return self.db(work)

    def items_this_round(self, number: int) -> int:
        """Items to label: ``labels_per_round``, less where ``max_labels`` runs out (0: spent)."""
        config = self.config
        if config.max_labels is None:
            return config.labels_per_round
        remaining = config.max_labels - self.labels_spent(number - 1)
        return max(0, min(config.labels_per_round, remaining // config.serve.labels_per_item))

    def wait_for_admin(self, number: int) -> str:
        logger.info("round %d waits for an admin to start it: %s/admin", number, self.served.url)
        while True:
            status, _, _ = self.round_entry(number)
            if status != "waiting":
                return status
            time.sleep(0.5)

    def sample_and_select(self, number: int, items: int) -> int:
        """Sample the pool, choose the items, make the round's campaign (its id)."""
        config, paths = self.config, self.paths
        pool_size = items * config.selection.pool
        prompts = round_prompts(self.prompts, pool_size, (number - 1) * pool_size, config.seed)
        uncertainty = config.selection.strategy == "uncertainty"
        reward_models = reward_models_after(config, paths, number - 1) if uncertainty else []
        pool = sample_pool(config, paths, number, prompts, reward_models)
        strategy: Strategy = config.selection.strategy if number > 1 else "random"
        picked = select([c.score for c in pool], items, strategy, seed=config.seed * 1_000 + number)
        chosen = set(picked)
        write_jsonl(
            paths.round(number) / "candidates.jsonl",
            [
                {
                    "prompt": c.prompt, "responses": c.responses, "pair": list(c.pair),
                    "score": c.score, "divergence": c.divergence, "selected": i in chosen,
                }
                for i, c in enumerate(pool)
            ],
        )  # fmt: skip
        compared = []
        if config.compare_items and number >= 2:
            compare_prompts = round_prompts(
                self.prompts, config.compare_items, (number - 2) * config.compare_items,
                config.seed + 17,
            )  # fmt: skip
            compared = comparison_items(config, paths, number, compare_prompts)
        name = f"{config.loop_name} · round {number}"
        campaign_id = make_campaign(
            self.served, self.loop_id, number, name, config, [pool[i] for i in picked], compared
        )
        logger.info(
            "round %d: %d of %d sampled items chosen (%s), %d model-against-model items; "
            "labelling at %s", number, len(picked), len(pool), strategy, len(compared),
            self.served.url,
        )  # fmt: skip
        return campaign_id

    def train(self, number: int, campaign_id: int) -> dict[str, Any]:
        """Export the labels, train the reward models and the policy, evaluate: the summary."""
        from rlhf.eval.stats import win_rate
        from rlhf.feedback.service import get_campaign
        from rlhf.feedback.service.stats import campaign_stats

        config, paths = self.config, self.paths
        started = time.perf_counter()
        rows = export_round(self.served, campaign_id, paths.labels(number))
        train_rows = [row for row in rows if "chosen_model" not in row]
        compare_rows = [row for row in rows if "chosen_model" in row]
        write_jsonl(paths.preferences(number), train_rows)
        first = 1 if config.reward_model_data == "all" else number
        rm_rows = [r for n in range(first, number + 1) for r in read_jsonl(paths.preferences(n))]
        if not rm_rows:
            raise ValueError(
                f"round {number} has no labels to train on (serve.round_timeout passed before "
                "anyone labelled)"
            )
        write_jsonl(paths.round(number) / "reward_model_labels.jsonl", rm_rows)
        accuracy = fresh_accuracy(reward_models_after(config, paths, number - 1), train_rows)
        members, policy = stage_configs_of_round(config, paths, number)
        for member, member_config in enumerate(members):
            run_stage(f"round {number}: reward model {member}", "reward_model", member_config)
        if policy is not None:
            if train_rows or config.policy_algorithm != "dpo":
                run_stage(f"round {number}: {config.policy_algorithm}", config.policy_algorithm,
                          policy)  # fmt: skip
            else:  # nothing to learn from: the policy stays as it was
                target = paths.policy(number) / "model"
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(policy_of_round(config, paths, number - 1), target)
        gold_accuracy = (
            gold_pair_accuracy(config, paths, reward_models_after(config, paths, number))
            if config.eval.gold
            else None
        )
        before = evaluate_policy(config, paths, number - 1)
        after = evaluate_policy(config, paths, number)
        stats = self.db(lambda s: campaign_stats(s, get_campaign(s, campaign_id)))
        summary: dict[str, Any] = {
            "round": number,
            "labels": stats["labels"],
            "train_labels": len(train_rows),
            "compare_labels": len(compare_rows),
            "labels_total": self.labels_spent(number),
            "alpha": stats["alpha"]["value"],
            "rm_accuracy_fresh": accuracy,
            "rm_gold_accuracy": gold_accuracy,
            "selection": config.selection.strategy if number > 1 else "random",
            **{k: v for k, v in after.items() if k != "gold_samples"},
        }
        if "gold_samples" in after and "gold_samples" in before:
            rate = win_rate(after["gold_samples"], before["gold_samples"])
            summary["win_rate_vs_previous"], summary["win_rate_vs_previous_se"] = rate.rate, rate.se
        if number == 1 and "gold" in before:
            summary["gold_initial"] = before["gold"]
        summary |= summarise_comparisons(human_comparisons(paths, number), number)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        return summary

    def run_round(self, number: int) -> dict[str, Any] | None:
        """Round ``number`` from wherever it stands; None when the label budget is spent."""
        config = self.config
        found = self.round_entry(number)
        if found is not None and found[0] == "done":
            return found[1]
        items = self.items_this_round(number)
        if items == 0 and (found is None or found[0] in ("waiting", "sampling")):
            logger.info("the label budget (max_labels=%s) is spent", config.max_labels)
            return None
        first = "waiting" if config.serve.start_rounds == "admin" else "sampling"
        status, _, campaign_id = self.round_entry(number, create=first)
        if status == "waiting":
            status = self.wait_for_admin(number)
        if status == "sampling":
            status, campaign_id = "labelling", self.sample_and_select(number, items)
        assert campaign_id is not None
        if status == "labelling":
            label_round(config, self.served, self.bots, campaign_id)
            self.set_status(number, "training")
        summary = self.train(number, campaign_id)
        self.set_status(number, "done", summary)
        return summary


def prepare_out(config: LoopConfig, resume: bool) -> tuple[Path, str]:
    """The run folder (refusing to clobber a loop there) and the database's location."""
    out = Path(config.out)
    marker = out / "loop.json"
    db = config.serve.db or str(out / "feedback.db")
    if resume and not marker.exists():
        raise ValueError(f"--resume: no loop in {out} (loop.json is missing)")
    if not resume and marker.exists():
        if not config.overwrite:
            raise ValueError(
                f"{out} already holds a loop; pass --resume to continue it, overwrite=true to "
                "start again there, or choose another out="
            )
        for name in ("init", "rounds"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("rounds.jsonl", "report.md", "loop.png", "admin_token.txt"):
            (out / name).unlink(missing_ok=True)
        if config.serve.db is None:  # the loop's own database goes with it
            for suffix in ("", "-wal", "-shm"):
                Path(db + suffix).unlink(missing_ok=True)
    if resume:
        saved = json.loads(marker.read_text(encoding="utf-8"))
        if (saved.get("name") or Path(saved["out"]).resolve().name) != config.loop_name:
            raise ValueError(
                f"--resume: {out} holds the loop {saved.get('name')!r}, not {config.loop_name!r}"
            )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(config.model_dump_json(indent=2), encoding="utf-8")
    return out, db


def find_or_create_loop(served: Any, config: LoopConfig, resume: bool) -> int:
    from rlhf.feedback.service.loops import create_loop, find_loop

    settings = {
        "rounds": config.rounds, "labels_per_round": config.labels_per_round,
        "selection": config.selection.strategy, "policy": config.policy_algorithm,
        "bots": config.bots.count, "max_labels": config.max_labels,
    }  # fmt: skip

    def work(session: Any) -> int:
        loop = find_loop(session, config.loop_name)
        if loop is not None and not resume:
            raise ValueError(
                f"the database {served.state.url} already has a loop named "
                f"{config.loop_name!r}: pass --resume to continue it, or name this one (name=)"
            )
        if loop is None:
            loop = create_loop(session, config.loop_name, str(Path(config.out).resolve()), settings)
        return loop.id

    return served.state.transaction(work)


def run_loop(
    config: LoopConfig, resume: bool = False, on_round: Callable[[dict], None] | None = None
) -> LoopResult:
    """Run (or with ``resume`` continue) the loop; ``on_round(summary)`` after each round."""
    from rlhf.eval.loop_report import write_loop_report
    from rlhf.feedback.app import ServedApp

    out, db = prepare_out(config, resume)
    paths = LoopPaths(out)
    for name, stage in init_stages(config, paths):
        run_stage(f"init: {name}", name, stage)
    with ServedApp(db, config.serve.host, config.serve.port) as served:
        if served.state.admin_token:  # a new database: its first admin
            token_file = out / "admin_token.txt"
            token_file.write_text(served.state.admin_token + "\n", encoding="utf-8")
            token_file.chmod(0o600)
            logger.info("the app's admin token is in %s", token_file)
        logger.info("feedback app: %s (admin page: %s/admin)", served.url, served.url)
        loop_id = find_or_create_loop(served, config, resume)
        bots = bot_annotators(config, served, config.loop_name) if config.bots.count else []
        try:
            run = _Loop(config, served, loop_id, bots)
            summaries = []
            for number in range(1, config.rounds + 1):
                summary = run.run_round(number)
                if summary is None:
                    break
                summaries.append(summary)
                write_jsonl(out / "rounds.jsonl", summaries)
                if on_round is not None:
                    on_round(summary)
        finally:
            for bot in bots:
                bot.close()
        url = served.url
    report = write_loop_report(summaries, out, title=f"rlhf loop: {config.loop_name}")
    return LoopResult(out, summaries, report, url)
