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

import typer
from pydantic import BaseModel
from rich.console import Console

from rlhf.config import ConfigError, config_help, load_config, preset_path, read_yaml

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
OverridesArgument = Annotated[
    list[str] | None,
    typer.Argument(help="key=value overrides, e.g. train.lr=1e-4", show_default=False),
]


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # our own bar shows training progress; transformers' per-file load/save bars are noise here
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _fail(error: BaseException) -> None:
    """Print an error for people and exit; RLHF_DEBUG=1 shows the traceback too."""
    if os.environ.get("RLHF_DEBUG"):
        console.print_exception()
    console.print(f"[bold red]error:[/] {error}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code=2 if isinstance(error, ConfigError) else 1)


def _resolve_config(
    cls: type[C], recipe: str, config: Path | None, preset: str | None, overrides: list[str] | None
) -> C:
    base = read_yaml(preset_path(recipe, preset)) if preset else None
    if config is None and preset is None:
        raise ConfigError(f"give --config FILE or --preset NAME (see rlhf {recipe} --help)")
    return load_config(cls, config, overrides or [], base=base)


def _run_recipe(
    recipe: str, cls: type[C], run: Callable[[C, bool], Any], config, preset, overrides, resume
) -> None:
    try:
        cfg = _resolve_config(cls, recipe, config, preset, overrides)
        _setup_logging()
        result = run(cfg, resume)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: resume with --resume from the last checkpoint")
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


def _recipe_command(recipe: str, cls_path: str, run_path: str, summary: str) -> None:
    """Register ``rlhf <recipe>`` with its config keys listed in ``--help``."""
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

    command.__doc__ = summary
    app.command(name=recipe, epilog=epilog)(command)


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
) -> None:
    """Read a dataset, count rows per kind, list the first errors (file:line) and show examples."""
    try:
        from rlhf.data.check import check_data

        columns = dict(item.split("=", 1) for item in column or [])
        scale = tuple(float(x) for x in rating_scale.split(",")) if rating_scale else None
        tokenizer = None
        if model is not None:
            from rlhf.models.load import load_tokenizer

            tokenizer = load_tokenizer(model)
        report = check_data(
            path,
            kind,
            tokenizer=tokenizer,
            columns=columns or None,
            rating_scale=scale,
            examples=examples,
        )
    except Exception as error:
        _fail(error)
        return
    report.render(Console())
    if report.errors:
        raise typer.Exit(code=1)


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/quickstart"),
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
) -> None:
    """Run the main job on the embedded default world (today: the tiny SFT run)."""
    from rlhf.recipes.sft import SFTConfig, run_sft

    overrides = [f"out={out}", f"train.seed={seed}", "overwrite=true"]
    _run_recipe("sft", SFTConfig, run_sft, None, "tiny", overrides, False)


def main() -> None:  # pragma: no cover - console-script entry
    app(prog_name="rlhf")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
