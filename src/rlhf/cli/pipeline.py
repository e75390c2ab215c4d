"""``rlhf quickstart`` and ``rlhf run``: the whole loop, stage after stage, ending in a report;
``rlhf loop``: the loop in rounds through the feedback app."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rlhf.cli.common import (
    ConfigOption,
    OverridesArgument,
    PresetOption,
    ResumeOption,
    console,
    fail,
    setup_logging,
)
from rlhf.config import config_help, load_config, preset_path, read_yaml

if TYPE_CHECKING:
    from rlhf.recipes.pipeline import PipelineConfig


def run_pipeline(config: PipelineConfig, start: str | None = None) -> None:
    """Run a pipeline with a heading per stage; end with the summary table and report path."""
    from rlhf.eval.report import summary_table
    from rlhf.recipes.pipeline import run_pipeline

    def heading(name: str, index: int, total: int) -> None:
        console.rule(f"[bold]stage {index + 1}/{total}: {name}")

    try:
        setup_logging()
        result = run_pipeline(config, on_stage=heading, start=start)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        raise typer.Exit(code=130) from None
    except Exception as error:  # every failure reaches the user as one clear line
        fail(error)
    console.print(summary_table(result.report))
    total = sum(result.timings.values())
    console.print(
        f"[green]done[/] in {total / 60:.1f} min: report at [bold]{result.report_dir}/report.md[/]"
        " (and report.html)",
        soft_wrap=True,  # a path that wraps cannot be copied
    )


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
        fail(error)
    run_pipeline(config)


def run_pipeline_file(
    config: Annotated[
        str,
        typer.Argument(
            help="Pipeline YAML (see docs/quickstart.md), or builtin:NAME for a packaged one: "
            "quickstart, tiny, offline-vs-online, offline-vs-online-tiny, process-supervision, "
            "process-supervision-tiny."
        ),
    ],
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
    """Run a pipeline file: the quickstart's stages on any models and data
    (``rlhf run builtin:offline-vs-online``: the offline-vs-online claims,
    docs/online-preference.md)."""
    from rlhf.recipes.pipeline import PipelineConfig

    try:
        if config.startswith("builtin:"):
            base = read_yaml(preset_path("pipeline", config.removeprefix("builtin:")))
            loaded = load_config(PipelineConfig, None, overrides or [], base=base)
        else:
            loaded = load_config(PipelineConfig, Path(config), overrides or [])
    except Exception as error:
        fail(error)
    run_pipeline(loaded, start)


SHOWN = (
    "round",
    "labels_total",
    "rm_accuracy_fresh",
    "rm_gold_accuracy",
    "gold",
    "win_rate_vs_previous",
)


def loop(
    config: ConfigOption = None,
    preset: PresetOption = None,
    resume: ResumeOption = False,
    overrides: OverridesArgument = None,
) -> None:
    """Rounds of sample → label in the feedback app (annotator bots and/or people, over
    HTTP) → reward model → policy, the app serving every round's campaign; Ctrl-C or a
    crash loses nothing: --resume continues (docs/loop.md)."""
    from rich.table import Table

    from rlhf.engine.trainer import TrainingInterrupted
    from rlhf.eval.loop_report import COLUMNS, cell
    from rlhf.recipes.loop import LoopConfig, run_loop

    def said(summary: dict) -> None:
        gold = f", gold {summary['gold']:.4f}" if "gold" in summary else ""
        accuracy = summary.get("rm_accuracy_fresh")
        fresh = f", RM accuracy on fresh labels {accuracy:.3f}" if accuracy is not None else ""
        console.print(
            f"[bold]round {summary['round']}[/]: {summary['labels']} labels "
            f"({summary['labels_total']} so far){fresh}{gold}",
            soft_wrap=True,
        )

    try:
        base = read_yaml(preset_path("loop", preset)) if preset else None
        loaded = load_config(LoopConfig, config, overrides or [], base=base)
        setup_logging()
        result = run_loop(loaded, resume, on_round=said)
    except (KeyboardInterrupt, TrainingInterrupted):
        console.print("[yellow]interrupted[/]: continue with the same command and --resume")
        raise typer.Exit(code=130) from None
    except Exception as error:  # every failure reaches the user as one clear line
        fail(error)
    # the report has every column; a terminal shows these
    shown = [c for c in COLUMNS if c[0] in SHOWN]
    table = Table(*(title for _, title, _ in shown))
    for row in result.rounds:
        table.add_row(*(cell(row, key, fmt) for key, _, fmt in shown))
    console.print(table)
    console.print(f"[green]done[/]: report at [bold]{result.report}[/]", soft_wrap=True)


def register(app: typer.Typer) -> None:
    from rlhf.recipes.loop import LoopConfig
    from rlhf.recipes.pipeline import PipelineConfig

    app.command()(quickstart)
    epilog = "\b\nConfig keys:\n" + config_help(PipelineConfig)
    app.command("run", epilog=epilog)(run_pipeline_file)
    app.command("loop", epilog="\b\nConfig keys:\n" + config_help(LoopConfig))(loop)
