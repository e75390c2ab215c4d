"""``rlhf data``: inspect and validate datasets."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from rlhf.cli.common import fail

app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True)


@app.command("check")
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
        fail(error)
    report.render(Console())
    if report.errors:
        raise typer.Exit(code=1)
