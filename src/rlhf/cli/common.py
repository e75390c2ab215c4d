"""What every command group shares: the error line, logging, config resolution, the options
several commands take, and the policy engine of the sampling commands."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn

import rich.markup
import typer
from rich.console import Console

from rlhf.config import ConfigError, load_config, parse_override, read_yaml
from rlhf.rollout.vllm_config import VLLMConfig

if TYPE_CHECKING:
    from rlhf.recipes.common import RecipeConfig
    from rlhf.recipes.registry import Recipe
    from rlhf.rollout.types import GenerationEngine

console = Console(stderr=True)

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

# sampling from a policy: `rlhf sample`, `rlhf best-of-n`, `rlhf feedback serve --model`
MaxNewTokensOption = Annotated[int, typer.Option(min=1, help="Response tokens at most.")]
TemperatureOption = Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 greedy.")]
TopPOption = Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus mass (1: off).")]
SeedOption = Annotated[int, typer.Option(help="Sampling seed (same seed, same samples).")]
DtypeOption = Annotated[str, typer.Option(help="float32, bfloat16, float16 or auto.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda:0, ...")]


def vllm_options(items: list[str] | None) -> list[str] | None:
    """``--vllm KEY=VALUE``'s check when the command line is parsed: each key a field of
    :class:`~rlhf.rollout.vllm_config.VLLMConfig` and each value one it accepts, else a
    one-line usage error naming the option."""
    vllm_settings(items)
    return items


def vllm_settings(items: list[str] | None) -> VLLMConfig:
    """The vLLM engine's settings from ``--vllm KEY=VALUE`` items (values parsed as YAML, as
    config overrides are: ``--vllm sync_bucket_mb=64 --vllm sleep=false``)."""
    from pydantic import ValidationError

    values = {}
    for item in items or []:
        try:
            path, value = parse_override(item)
        except ConfigError:
            raise typer.BadParameter(
                f"{item!r}: expected KEY=VALUE, e.g. placement=trainer", param_hint="'--vllm'"
            ) from None
        if len(path) != 1 or path[0] not in VLLMConfig.model_fields:
            known = ", ".join(VLLMConfig.model_fields)
            raise typer.BadParameter(
                f"unknown key {'.'.join(path)!r} (expected one of {known})",
                param_hint="'--vllm'",
            )
        values[path[0]] = value
    try:
        return VLLMConfig.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc']))}={item['input']!r}: {item['msg']}"
            for item in error.errors()
        )
        raise typer.BadParameter(problems, param_hint="'--vllm'") from None


EngineOption = Annotated[
    Literal["hf", "vllm"],
    typer.Option(help="Generation engine: hf (transformers' generate) or vllm (docs/vllm.md)."),
]
VLLMOption = Annotated[
    list[str] | None,
    typer.Option(
        "--vllm",
        metavar="KEY=VALUE",
        callback=vllm_options,
        help="A setting of the vLLM engine (repeatable), e.g. placement=trainer, dtype=bfloat16; "
        "the keys of sampling.vllm (docs/vllm.md).",
        show_default=False,
    ),
]


def setup_logging(models: bool = True) -> None:
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


def fail(error: BaseException | str) -> NoReturn:
    """Print an error for people and exit: code 2 for a config error, else 1; RLHF_DEBUG=1
    shows the traceback too."""
    if os.environ.get("RLHF_DEBUG"):
        console.print_exception()
    message = rich.markup.escape(str(error))  # "pip install 'rlhf[postgres]'" is no markup
    console.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code=2 if isinstance(error, ConfigError) else 1)


def resolve_config(
    recipe: Recipe, config: Path | None, preset: str | None, overrides: list[str] | None
) -> RecipeConfig:
    """``rlhf <recipe>``'s config: the preset, then the file, then the overrides."""
    base = read_yaml(recipe.preset_file(preset)) if preset else None
    try:
        return load_config(recipe.config_class(), config, overrides or [], base=base)
    except ConfigError as error:
        if config is None and preset is None:  # overrides alone: say how else to start
            name = recipe.name
            raise ConfigError(
                f"{error}\n(rlhf {name} runs from key=value overrides alone, from --config "
                f"FILE or from --preset NAME; rlhf {name} --help lists every key)"
            ) from None
        raise


def policy_engine(
    model: str,
    dtype: str,
    device: str,
    batch_size: int,
    engine: str = "hf",
    vllm: list[str] | None = None,
) -> GenerationEngine:
    """A generation engine of kind ``engine`` over the policy ``model`` (a folder or hub
    name), with ``vllm``'s ``KEY=VALUE`` settings; the caller closes it
    (:func:`rlhf.rollout.factory.close_engine`)."""
    from rlhf.engine.trainer import resolve_device
    from rlhf.rollout.factory import load_engine_for
    from rlhf.rollout.types import EngineChoice

    if vllm and engine != "vllm":
        raise ConfigError("--vllm sets the vLLM engine's options: add --engine vllm")
    choice = EngineChoice(engine=engine, vllm=vllm_settings(vllm))
    return load_engine_for(
        choice, model, dtype=dtype, device=str(resolve_device(device)), batch_size=batch_size
    )
