"""``rlhf <recipe>``: one training command per entry of :mod:`rlhf.recipes.registry`.

Every one takes ``--config FILE``, ``--preset NAME`` and ``key=value`` overrides (applied in
that order) and ``--resume``; its ``--help`` lists every config key with its type, default and
meaning. A first Ctrl-C saves a checkpoint of the step and exits with code 130.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

from rlhf.cli.common import (
    ConfigOption,
    LossOption,
    OverridesArgument,
    PresetOption,
    ResumeOption,
    console,
    fail,
    resolve_config,
    setup_logging,
)
from rlhf.config import config_help
from rlhf.recipes.registry import RECIPES, Recipe


def run_recipe(
    recipe: Recipe,
    config: Path | None,
    preset: str | None,
    overrides: list[str] | None,
    resume: bool,
) -> None:
    """Resolve the config, train, and say where the model went (or why it did not)."""
    from rlhf.engine.trainer import TrainingInterrupted, latest_checkpoint

    cfg = None
    try:
        cfg = resolve_config(recipe, config, preset, overrides)
        setup_logging()
        result = recipe.start(cfg, resume)
    except TrainingInterrupted as stop:  # the first Ctrl-C: a checkpoint of the step is saved
        console.print(
            f"[yellow]interrupted[/] after step {stop.step}: checkpoint saved to "
            f"{stop.checkpoint}; continue with the same command and --resume",
            soft_wrap=True,
        )
        raise typer.Exit(code=130) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        last = latest_checkpoint(Path(cfg.out)) if cfg is not None else None
        where = (
            f"the last checkpoint is {last}: continue from it with --resume"
            if last is not None
            else "no checkpoint was saved, so --resume has nothing to continue from"
        )
        console.print(f"[yellow]interrupted[/] without saving; {where}", soft_wrap=True)
        raise typer.Exit(code=130) from None
    except Exception as error:  # every failure reaches the user as one clear line
        fail(error)
    console.print(
        f"[green]done[/]: {result.final_step} steps; model saved to [bold]{result.model_dir}[/]"
    )
    for row in reversed(result.metrics):
        evals = {k.removeprefix("eval_"): v for k, v in row.items() if k.startswith("eval_")}
        if evals:
            console.print("held-out: " + ", ".join(f"{k} {v:.4g}" for k, v in evals.items()))
            break


def recipe_command(recipe: Recipe) -> Callable[..., None]:
    """``rlhf <recipe>``'s command function; ``recipe.loss_option`` adds ``--loss NAME``, a
    shortcut for the override ``loss.name=NAME``."""

    def command(
        overrides: OverridesArgument = None,
        config: ConfigOption = None,
        preset: PresetOption = None,
        resume: ResumeOption = False,
    ) -> None:
        run_recipe(recipe, config, preset, overrides, resume)

    def command_with_loss(
        overrides: OverridesArgument = None,
        config: ConfigOption = None,
        preset: PresetOption = None,
        resume: ResumeOption = False,
        loss: LossOption = None,
    ) -> None:
        # --loss comes first, so an explicit loss.name=... override still wins
        overrides = [*([f"loss.name={loss}"] if loss else []), *(overrides or [])]
        run_recipe(recipe, config, preset, overrides, resume)

    chosen = command_with_loss if recipe.loss_option else command
    chosen.__doc__ = recipe.help
    return chosen


def register(app: typer.Typer) -> None:
    """One command per registered recipe, its config keys listed in ``--help``."""
    for recipe in RECIPES:
        epilog = "\b\nConfig keys:\n" + config_help(recipe.config_class())
        app.command(name=recipe.name, epilog=epilog)(recipe_command(recipe))
