"""The ``rlhf`` command line.

Every training command takes ``--config FILE`` (YAML), ``--preset NAME`` (a packaged config
such as ``tiny``) and any number of ``key=value`` overrides, applied in that order; ``--help``
lists every key with its type, default and meaning.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import rich.markup
import typer
from pydantic import BaseModel
from rich.console import Console

from rlhf.config import ConfigError, config_help, load_config, preset_path, read_yaml
from rlhf.feedback.limits import MAX_BODY_BYTES, MAX_UPLOAD_BYTES

app = typer.Typer(
    help="rlhf: reinforcement learning from human feedback, end to end.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(stderr=True)
C = TypeVar("C", bound=BaseModel)

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file.", show_default=False)
]
PresetOption = Annotated[
    str | None, typer.Option("--preset", "-p", help="Packaged config to start from, e.g. tiny.")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue the run in `out` from its latest checkpoint.")
]
LossOption = Annotated[
    str | None,
    typer.Option(
        "--loss",
        help="The loss, e.g. dpo, ipo, hinge, simpo (= loss.name=NAME).",
        show_default=False,
    ),
]
OverridesArgument = Annotated[
    list[str] | None,
    typer.Argument(help="key=value overrides, e.g. train.lr=1e-4", show_default=False),
]


def _setup_logging(models: bool = True) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not models:  # importing transformers costs a second: not for a server with no model
        return
    # our own bar shows training progress; transformers' per-file load/save bars are noise here
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _fail(error: BaseException) -> None:
    """Print an error for people and exit; RLHF_DEBUG=1 shows the traceback too."""
    if os.environ.get("RLHF_DEBUG"):
        console.print_exception()
    message = rich.markup.escape(str(error))  # "pip install 'rlhf[postgres]'" is no markup
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code=2 if isinstance(error, ConfigError) else 1)


def _resolve_config(
    cls: type[C], recipe: str, config: Path | None, preset: str | None, overrides: list[str] | None
) -> C:
    base = read_yaml(preset_path(recipe, preset)) if preset else None
    try:
        return load_config(cls, config, overrides or [], base=base)
    except ConfigError as error:
        if config is None and preset is None:  # overrides alone: say how else to start
            raise ConfigError(
                f"{error}\n(rlhf {recipe} runs from key=value overrides alone, from --config "
                f"FILE or from --preset NAME; rlhf {recipe} --help lists every key)"
            ) from None
        raise


def _run_recipe(
    recipe: str, cls: type[C], run: Callable[[C, bool], Any], config, preset, overrides, resume
) -> None:
    from rlhf.engine.trainer import TrainingInterrupted, latest_checkpoint

    cfg: C | None = None
    try:
        cfg = _resolve_config(cls, recipe, config, preset, overrides)
        _setup_logging()
        result = run(cfg, resume)
    except TrainingInterrupted as stop:  # the first Ctrl-C: a checkpoint of the step is saved
        console.print(
            f"[yellow]interrupted[/] after step {stop.step}: checkpoint saved to "
            f"{stop.checkpoint}; continue with the same command and --resume",
            soft_wrap=True,
        )
        raise typer.Exit(code=130) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        out = getattr(cfg, "out", None)  # every recipe config has one, once it loaded
        last = latest_checkpoint(Path(out)) if out is not None else None
        where = (
            f"the last checkpoint is {last}: continue from it with --resume"
            if last is not None
            else "no checkpoint was saved, so --resume has nothing to continue from"
        )
        console.print(f"[yellow]interrupted[/] without saving; {where}", soft_wrap=True)
        raise typer.Exit(code=130) from None
    except Exception as error:  # every failure reaches the user as one clear line
        _fail(error)
        return
    console.print(
        f"[green]done[/]: {result.final_step} steps; model saved to [bold]{result.model_dir}[/]"
    )
    for row in reversed(result.metrics):
        evals = {k.removeprefix("eval_"): v for k, v in row.items() if k.startswith("eval_")}
        if evals:
            console.print("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in evals.items()))
            break


def _recipe_command(
    recipe: str, cls_path: str, run_path: str, summary: str, loss_option: bool = False
) -> None:
    """Register ``rlhf <recipe>`` with its config keys listed in ``--help``; ``loss_option``
    adds ``--loss NAME``, a shortcut for the override ``loss.name=NAME``."""
    import importlib

    module = importlib.import_module(cls_path)
    cls = getattr(module, run_path.split(":")[0])
    epilog = "\b\nConfig keys:\n" + config_help(cls)

    def command(
        overrides: OverridesArgument = None,
        config: ConfigOption = None,
        preset: PresetOption = None,
        resume: ResumeOption = False,
    ) -> None:
        run = getattr(module, run_path.split(":")[1])
        _run_recipe(recipe, cls, run, config, preset, overrides, resume)

    def command_with_loss(
        overrides: OverridesArgument = None,
        config: ConfigOption = None,
        preset: PresetOption = None,
        resume: ResumeOption = False,
        loss: LossOption = None,
    ) -> None:
        # --loss comes first, so an explicit loss.name=... override still wins
        overrides = [*([f"loss.name={loss}"] if loss else []), *(overrides or [])]
        command(overrides, config, preset, resume)

    chosen = command_with_loss if loss_option else command
    chosen.__doc__ = summary
    app.command(name=recipe, epilog=epilog)(chosen)


_recipe_command(
    "sft",
    "rlhf.recipes.sft",
    "SFTConfig:run_sft",
    "Supervised fine-tuning on demonstrations (loss on completion tokens only).",
)
_recipe_command(
    "pretrain",
    "rlhf.recipes.pretrain",
    "PretrainConfig:run_pretrain",
    "Pretrain a (tiny) causal LM on raw text, from scratch or further.",
)
_recipe_command(
    "rm",
    "rlhf.recipes.reward_model",
    "RewardModelConfig:run_reward_model",
    "Train a reward model (Bradley-Terry) on preference pairs, rankings or ratings.",
)
_recipe_command(
    "raft",
    "rlhf.recipes.raft",
    "RAFTConfig:run_raft",
    "RAFT: rounds of sample N per prompt, keep the best by reward, fine-tune on them.",
)
_recipe_command(
    "dpo",
    "rlhf.recipes.dpo",
    "DPOConfig:run_dpo",
    "Offline preference optimisation on pairs: DPO, IPO, hinge, SimPO, ORPO, ... (--loss NAME).",
    loss_option=True,
)
_recipe_command(
    "kto",
    "rlhf.recipes.kto",
    "KTOConfig:run_kto",
    "KTO on unpaired thumbs up/down (preference pairs are split into thumbs).",
)
_recipe_command(
    "grpo",
    "rlhf.recipes.grpo",
    "GRPOConfig:run_grpo",
    "GRPO: online RL with group-normalised rewards of K samples per prompt, KL as a loss term.",
)
_recipe_command(
    "rloo",
    "rlhf.recipes.rloo",
    "RLOOConfig:run_rloo",
    "RLOO: online REINFORCE with a leave-one-out baseline over K samples per prompt.",
)
_recipe_command(
    "reinforce",
    "rlhf.recipes.reinforce",
    "ReinforceConfig:run_reinforce",
    "REINFORCE: online policy gradient with a moving-average reward baseline.",
)
_recipe_command(
    "remax",
    "rlhf.recipes.remax",
    "ReMaxConfig:run_remax",
    "ReMax: online REINFORCE with the greedy response's reward as the baseline.",
)
_recipe_command(
    "ppo",
    "rlhf.recipes.ppo",
    "PPOConfig:run_ppo",
    "PPO: online RL with a learned critic (GAE), the KL to the reference in the reward.",
)


@data_app.command("check")
def data_check(
    path: Annotated[str, typer.Argument(help="File, datasets folder, hub name or builtin:NAME.")],
    kind: Annotated[
        str | None, typer.Option(help="Expected record kind: preference, ranking, completion, ...")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Tokenizer (model path) to show rows as the model sees them.")
    ] = None,
    column: Annotated[
        list[str] | None, typer.Option(help="Column mapping field=column (repeatable).")
    ] = None,
    rating_scale: Annotated[
        str | None, typer.Option(help="Rating scale low,high when rows do not state one, e.g. 1,5.")
    ] = None,
    examples: Annotated[int, typer.Option(help="Example rows to show.")] = 3,
    max_length: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="With --model: count the rows that data.max_length=N would truncate, and by "
            "how much [default: data.max_length's default].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Read a dataset, count rows per kind, list the first errors (file:line) and show examples;
    with --model, also what truncation to --max-length tokens would cut."""
    try:
        from rlhf.data.check import check_data

        columns = dict(item.split("=", 1) for item in column or [])
        scale = tuple(float(x) for x in rating_scale.split(",")) if rating_scale else None
        tokenizer = None
        if model is not None:
            from rlhf.models.load import load_tokenizer

            tokenizer = load_tokenizer(model)
            if max_length is None:
                from rlhf.recipes.common import DataConfig

                max_length = DataConfig.model_fields["max_length"].default
        elif max_length is not None:
            raise typer.BadParameter("--max-length needs --model (the tokenizer that counts)")
        report = check_data(
            path,
            kind,
            tokenizer=tokenizer,
            columns=columns or None,
            rating_scale=scale,
            examples=examples,
            max_length=max_length,
        )
    except Exception as error:
        _fail(error)
        return
    report.render(Console())
    if report.errors:
        raise typer.Exit(code=1)


@app.command()
def score(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Reward model folder (rlhf rm's <out>/model).")
    ],
    input_path: Annotated[
        str,
        typer.Option(
            "--input",
            "-i",
            help="Rows of (prompt, completion) or (prompt, response): .jsonl, .json, .parquet, .csv.",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="JSON Lines to write: each row plus its reward.")
    ],
    batch_size: Annotated[int, typer.Option(help="Sequences scored per forward pass.")] = 16,
    raw: Annotated[
        bool, typer.Option("--raw", help="Write the raw score as `reward` (no normalisation).")
    ] = False,
    max_length: Annotated[
        int | None, typer.Option(help="Cut longer sequences (prompt start first).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda:0, ...")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Score (prompt, response) rows with a reward model, writing each row plus its reward.

    `reward` is normalised (the reference responses of training have mean 0, std 1) and
    `raw_reward` is the model's own output; with --raw, `reward` is the raw score.
    """
    try:
        from rlhf.recipes.reward_model import score_file

        _setup_logging()
        summary = score_file(
            model, input_path, output, batch_size=batch_size, raw=raw, max_length=max_length,
            device=device, progress=progress,
        )  # fmt: skip
    except Exception as error:
        _fail(error)
        return
    rows, mean = summary["rows"], summary["mean_reward"]
    console.print(
        f"[green]done[/]: scored {rows:.0f} rows (mean reward {mean:.4g}) to [bold]{output}[/]"
    )


# ---------------------------------------------------------------- sampling: sample, best-of-n
PolicyOption = Annotated[
    str, typer.Option("--model", "-m", help="Policy: model folder or hub name.", show_default=False)
]
PromptsOption = Annotated[
    str,
    typer.Option(
        help="Prompts: any file with a prompt field (or conversations), or builtin:NAME.",
        show_default=False,
    ),
]
MaxNewTokensOption = Annotated[int, typer.Option(min=1, help="Response tokens at most.")]
TemperatureOption = Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 greedy.")]
TopPOption = Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus mass (1: off).")]
TopKOption = Annotated[int, typer.Option(min=0, help="Sample among the k most likely (0: off).")]
SeedOption = Annotated[int, typer.Option(help="Sampling seed (same seed, same samples).")]
GenBatchOption = Annotated[int, typer.Option(min=1, help="Sequences generated together.")]
LimitOption = Annotated[int | None, typer.Option(min=1, help="Use the first N prompts only.")]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda:0, ...")]
ColumnOption = Annotated[
    list[str] | None, typer.Option("--column", help="Column mapping field=column (repeatable).")
]


def _engine(model: str, dtype: str, device: str, batch_size: int) -> Any:
    from rlhf.engine.trainer import resolve_device
    from rlhf.rollout import HFGenerationEngine

    return HFGenerationEngine.from_pretrained(
        model, dtype=dtype, device=str(resolve_device(device)), batch_size=batch_size
    )


def _prompts(
    source: str, column: list[str] | None, limit: int | None, answer_field: str | None = None
) -> tuple[list[Any], list[dict[str, Any]] | None]:
    """The prompts and, with ``answer_field``, each one's ground truth for the reward."""
    from rlhf.rollout.candidates import load_prompts_and_answers

    columns = dict(item.split("=", 1) for item in column or [])
    return load_prompts_and_answers(source, answer_field, columns=columns or None, limit=limit)


AnswerFieldOption = Annotated[
    str | None,
    typer.Option(
        help="Column holding each prompt's ground truth (e.g. answer), passed to the reward: "
        "verifiable rewards such as rule=gsm8k need it.",
        show_default=False,
    ),
]


@app.command()
def sample(
    model: PolicyOption,
    prompts: PromptsOption,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Candidates file to write (JSON Lines).")
    ],
    num_samples: Annotated[
        int, typer.Option("--num-samples", "-k", min=1, max=64, help="Responses per prompt (K).")
    ] = 4,
    max_new_tokens: MaxNewTokensOption = 64,
    temperature: TemperatureOption = 1.0,
    top_p: TopPOption = 1.0,
    top_k: TopKOption = 0,
    seed: SeedOption = 0,
    batch_size: GenBatchOption = 64,
    limit: LimitOption = None,
    reward: Annotated[
        str | None,
        typer.Option(
            help="Score responses: rule=NAME, model=PATH or a reward config file (.yaml/.json); "
            "adds `rewards` to rows."
        ),
    ] = None,
    keep_top: Annotated[
        int | None, typer.Option(min=1, help="With --reward: keep the best k per prompt.")
    ] = None,
    answer_field: AnswerFieldOption = None,
    column: ColumnOption = None,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "auto",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Sample K responses per prompt into a candidates file, ready for labelling.

    Each row: {"prompt", "responses": [K], "finished": [K] (ended with EOS), "logps": [K]
    (summed log-probs at the temperature)}; see docs/sampling.md.
    """
    try:
        from rlhf.recipes.best_of_n import sample_to_file
        from rlhf.rewards import build_reward, parse_reward_spec
        from rlhf.rollout import SamplingParams

        _setup_logging()
        if keep_top is not None and reward is None:
            raise ValueError("--keep-top needs --reward to rank the responses by")
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            num_samples=num_samples, seed=seed,
        )  # fmt: skip
        prompt_list, metadata = _prompts(prompts, column, limit, answer_field)
        scorer = build_reward(parse_reward_spec(reward)) if reward else None
        engine = _engine(model, dtype, device, batch_size)
        summary = sample_to_file(
            engine, prompt_list, params, output, reward=scorer, keep_top=keep_top,
            prompt_metadata=metadata, progress=progress,
        )  # fmt: skip
    except Exception as error:
        _fail(error)
        return
    line = (
        f"[green]done[/]: {summary['responses']:.0f} responses to {summary['prompts']:.0f} "
        f"prompts ({summary['finished_rate']:.0%} ended with EOS)"
    )
    if "mean_reward" in summary:
        line += f", mean reward {summary['mean_reward']:.4g}"
    console.print(f"{line} → [bold]{output}[/]")


@app.command("best-of-n")
def best_of_n(
    model: PolicyOption,
    prompts: PromptsOption,
    reward: Annotated[
        str,
        typer.Option(
            help="Reward to pick by: rule=NAME, model=PATH or a reward config file (.yaml/.json).",
            show_default=False,
        ),
    ],
    gold: Annotated[
        str | None,
        typer.Option(
            help="Gold reward to report for the picked samples (rule=NAME, model=PATH, a file)."
        ),
    ] = None,
    max_n: Annotated[
        int, typer.Option(min=1, max=1024, help="Largest N; the curve has N = 1, 2, 4, ... max.")
    ] = 16,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/best-of-n"),
    max_new_tokens: MaxNewTokensOption = 64,
    temperature: TemperatureOption = 1.0,
    top_p: TopPOption = 1.0,
    top_k: TopKOption = 0,
    seed: SeedOption = 0,
    batch_size: GenBatchOption = 64,
    limit: LimitOption = None,
    answer_field: AnswerFieldOption = None,
    column: ColumnOption = None,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "auto",
) -> None:
    """Reward (and gold reward) of best-of-N against its analytic KL, log N - (N-1)/N.

    Samples max-n responses per prompt once; the expected best of each N is computed over
    all N-subsets of them. Writes best_of_n.jsonl/.csv, samples.jsonl (every sample with its
    rewards) and best_of_n.png when matplotlib is installed.
    """
    try:
        from rlhf.recipes.best_of_n import evaluate_best_of_n, report_table, write_report
        from rlhf.rewards import build_reward, parse_reward_spec
        from rlhf.rollout import SamplingParams

        _setup_logging()
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
            num_samples=max_n, seed=seed,
        )  # fmt: skip
        prompt_list, metadata = _prompts(prompts, column, limit, answer_field)
        scorer = build_reward(parse_reward_spec(reward))
        gold_scorer = build_reward(parse_reward_spec(gold)) if gold else None
        engine = _engine(model, dtype, device, batch_size)
        report = evaluate_best_of_n(
            engine, prompt_list, params, scorer, gold_scorer, prompt_metadata=metadata
        )
        paths = write_report(report, out)
    except Exception as error:
        _fail(error)
        return
    Console().print(report_table(report))
    written = ", ".join(path.name for path in paths.values())
    console.print(f"[green]done[/]: wrote {written} to [bold]{out}[/]")


def _run_pipeline(config: Any, start: str | None = None) -> None:
    """Run a pipeline with a heading per stage; end with the summary table and report path."""
    from rlhf.eval.report import summary_table
    from rlhf.recipes.pipeline import run_pipeline

    def heading(name: str, index: int, total: int) -> None:
        console.rule(f"[bold]stage {index + 1}/{total}: {name}")

    try:
        _setup_logging()
        result = run_pipeline(config, on_stage=heading, start=start)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(code=130) from None
    except Exception as error:  # every failure reaches the user as one clear line
        _fail(error)
        return
    console.print(summary_table(result.report))
    total = sum(result.timings.values())
    console.print(
        f"[green]done[/] in {total / 60:.1f} min: report at [bold]{result.report_dir}/report.md[/]"
        " (and report.html)",
        soft_wrap=True,  # a path that wraps cannot be copied
    )


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/quickstart"),
    seed: Annotated[int, typer.Option(help="Seed (the same seed gives the same numbers).")] = 0,
    preset: Annotated[
        str, typer.Option(help="Packaged pipeline: quickstart (~8 min on 2 cores) or tiny.")
    ] = "quickstart",
) -> None:
    """The whole RLHF loop on the embedded world, nothing downloaded: pretrain a tiny model,
    SFT, sample, simulated labels, reward model, PPO at two KL coefficients and DPO, then an
    over-optimisation report (docs/quickstart.md)."""
    from rlhf.recipes.pipeline import PipelineConfig

    try:
        config = load_config(
            PipelineConfig,
            None,
            [f"out={out}", f"seed={seed}", "overwrite=true"],
            base=read_yaml(preset_path("pipeline", preset)),
        )
    except Exception as error:
        _fail(error)
        return
    _run_pipeline(config)


def _pipeline_keys() -> str:
    from rlhf.recipes.pipeline import PipelineConfig

    return "\b\nConfig keys:\n" + config_help(PipelineConfig)


@app.command("run", epilog=_pipeline_keys())
def run_pipeline_command(
    config: Annotated[Path, typer.Argument(help="Pipeline YAML (see docs/quickstart.md).")],
    overrides: OverridesArgument = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Start at this stage (e.g. reward_model), keeping the earlier stages' output.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a pipeline file: the quickstart's stages on any models and data."""
    from rlhf.recipes.pipeline import PipelineConfig

    try:
        loaded = load_config(PipelineConfig, config, overrides or [])
    except Exception as error:
        _fail(error)
        return
    _run_pipeline(loaded, start)


feedback_app = typer.Typer(
    help="The human-feedback web app: serve it, add accounts and campaigns, export labels "
    "(docs/feedback.md).",
    no_args_is_help=True,
)
app.add_typer(feedback_app, name="feedback")
DbOption = Annotated[
    str,
    typer.Option(
        "--db", help="SQLite file path (created if missing) or a database URL, e.g. "
        "postgresql+psycopg://user@host/db."
    ),
]  # fmt: skip


def feedback_sampler(
    model: str, dtype: str, device: str, max_new_tokens: int, temperature: float, top_p: float,
    seed: int,
) -> Callable[[list[Any], int], list[list[str]]]:  # fmt: skip
    """The web app's model: ``sample(prompts, n)`` gives n replies per prompt, a fresh seed
    per call so that a repeated prompt gets new candidates."""
    import itertools

    from rlhf.feedback.tasks import as_text
    from rlhf.recipes.best_of_n import sample_candidates
    from rlhf.rollout import SamplingParams

    engine = _engine(model, dtype, device, batch_size=16)
    calls = itertools.count(seed)

    def sample(prompts: list[Any], n: int) -> list[list[str]]:
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            num_samples=n, seed=next(calls),
        )  # fmt: skip
        candidates = sample_candidates(engine, [as_text(p) for p in prompts], params)
        return [list(candidate.responses) for candidate in candidates]

    return sample


@feedback_app.command("serve")
def feedback_serve(
    db: DbOption = "feedback.db",
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    model: Annotated[
        str | None,
        typer.Option(help="Checkpoint or hub name to sample candidates and chat replies from."),
    ] = None,
    max_new_tokens: MaxNewTokensOption = 128,
    temperature: TemperatureOption = 1.0,
    top_p: TopPOption = 1.0,
    seed: SeedOption = 0,
    dtype: DtypeOption = "float32",
    device: DeviceOption = "auto",
    secure_cookies: Annotated[
        bool | None,
        typer.Option(
            "--secure-cookies/--no-secure-cookies",
            help="Force the Secure cookie flag (default: set when reached over HTTPS).",
            show_default=False,
        ),
    ] = None,
    max_body: Annotated[
        int,
        typer.Option(
            min=1024, help="Largest request body in bytes (413 beyond it, refused unread)."
        ),
    ] = MAX_BODY_BYTES,
    max_upload: Annotated[
        int, typer.Option(min=1024, help="Largest campaign upload (its whole file) in bytes.")
    ] = MAX_UPLOAD_BYTES,
) -> None:
    """Run the web app: annotators at /annotate, admins at /admin, the API under /api.

    The schema is created or migrated at start. On a database with no admin, an admin
    account is created and its token printed once.
    """
    try:
        import socket

        import uvicorn

        from rlhf.feedback.app import create_app

        with socket.socket() as probe:  # a taken port, said before a model loads
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind((host, port))
            except OSError as error:
                raise ValueError(f"cannot listen on {host}:{port}: {error.strerror}") from None
        _setup_logging(models=model is not None)
        sampler = None
        if model is not None:
            sampler = feedback_sampler(
                model, dtype, device, max_new_tokens, temperature, top_p, seed
            )
        web = create_app(
            db,
            sampler=sampler,
            secure_cookies=secure_cookies,
            max_body_bytes=max_body,
            max_upload_bytes=max_upload,
        )
        token = web.state.feedback.start()  # the database's problems, said before serving
        if token:
            console.print(
                f"created the admin account; its token (shown once): {token}", soft_wrap=True
            )
        console.print(f"serving [bold]http://{host}:{port}/[/] (database {db})")
        uvicorn.run(
            web, host=host, port=port, log_level="warning", proxy_headers=True,
            timeout_graceful_shutdown=5,
        )  # fmt: skip
    except Exception as error:
        _fail(error)


def _feedback_db(db: str) -> Any:
    from rlhf.feedback.db import database_url, make_engine, migrate, session_factory

    engine = make_engine(database_url(db))
    migrate(engine)
    return session_factory(engine)


@feedback_app.command("add-user")
def feedback_add_user(
    name: Annotated[str, typer.Argument(help="Account name (shown to admins only).")],
    db: DbOption = "feedback.db",
    role: Annotated[str, typer.Option(help="annotator or admin.")] = "annotator",
) -> None:
    """Create an account and print its login token (shown once; only its hash is kept)."""
    from rlhf.feedback import service

    try:
        with _feedback_db(db)() as session:
            _, token = service.create_user(session, name, role)
            session.commit()
    except Exception as error:
        _fail(getattr(error, "message", error))
        return
    print(token)
    who = rich.markup.escape(f"{role} {name!r}")
    console.print(f"[green]created[/] {who}; the token above is shown only now")


@feedback_app.command("create-campaign")
def feedback_create_campaign(
    source: Annotated[
        Path, typer.Argument(help="JSON Lines of prompts and responses, as `rlhf sample` writes.")
    ],
    name: Annotated[str, typer.Option(help="Campaign name.")],
    task: Annotated[str, typer.Option(help="pairwise, rank, rate, thumbs, edit or chat.")],
    db: DbOption = "feedback.db",
    k: Annotated[int, typer.Option(help="Distinct annotators per item.")] = 1,
    guidelines: Annotated[
        Path | None, typer.Option(help="A text or markdown file of guidelines.")
    ] = None,
    render: Annotated[str, typer.Option(help="Show model text as text or markdown.")] = "text",
) -> None:
    """Create a campaign from a file (the admin page does the same by upload)."""
    from rlhf.feedback import service
    from rlhf.feedback.campaigns import parse_source

    try:
        items = parse_source(task, source.read_text(encoding="utf-8"))
        notes = guidelines.read_text(encoding="utf-8") if guidelines else ""
        spec = service.CampaignSpec(name, task, notes, k, render)
        with _feedback_db(db)() as session:
            service.create_campaign(session, spec, items)
            session.commit()
    except Exception as error:
        message = getattr(error, "message", error)
        _fail(ValueError(f"{source}: {message}") if isinstance(error, ValueError) else error)
        return
    what = rich.markup.escape(f"{task} campaign {name!r}")
    console.print(f"[green]created[/] {what}: {len(items)} items")


@feedback_app.command("export")
def feedback_export(
    campaign: Annotated[str, typer.Argument(help="Campaign name or id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSON Lines file to write.")],
    db: DbOption = "feedback.db",
    format: Annotated[
        str | None,
        typer.Option(
            help="Record kind; default by task: preference, ranking, rating, binary, "
            "completion (edit), preference (chat)."
        ),
    ] = None,
) -> None:
    """Export a campaign's labels as data records that rm, dpo, kto and sft read."""
    import json

    from sqlalchemy import or_, select

    from rlhf.feedback import service
    from rlhf.feedback.db import Campaign

    try:
        with _feedback_db(db)() as session:
            key = int(campaign) if campaign.isdigit() else -1
            found = session.scalar(
                select(Campaign).where(or_(Campaign.name == campaign, Campaign.id == key))
            )
            if found is None:
                raise ValueError(f"no campaign {campaign!r} in {db}")
            rows = list(service.export_rows(session, found, format))
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
    except Exception as error:
        _fail(getattr(error, "message", error))
        return
    console.print(
        f"[green]done[/]: {len(rows)} records → [bold]{rich.markup.escape(str(output))}[/]"
    )


def main() -> None:  # pragma: no cover - console-script entry
    app(prog_name="rlhf")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
