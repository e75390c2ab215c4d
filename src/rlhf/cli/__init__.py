"""The ``rlhf`` command line: one typer ``app`` assembled from its command groups.

Every training command takes ``--config FILE`` (YAML), ``--preset NAME`` (a packaged config
such as ``tiny``) and any number of ``key=value`` overrides, applied in that order; ``--help``
lists every key with its type, default and meaning.

| module | commands |
|---|---|
| ``train`` | ``rlhf <recipe>``, one per entry of :mod:`rlhf.recipes.registry` |
| ``sample`` | ``score``, ``sample``, ``best-of-n`` |
| ``pipeline`` | ``quickstart``, ``run`` |
| ``data`` | ``data check`` |
| ``feedback`` | ``feedback serve``, ``add-user``, ``create-campaign``, ``export``, ``bots``, ``ratings`` |
| ``common`` | config resolution, the error line, logging, shared options |
"""

from __future__ import annotations

import typer

from rlhf.cli import data, feedback, pipeline, sample, train
from rlhf.cli.feedback import feedback_sampler

app = typer.Typer(
    help="rlhf: reinforcement learning from human feedback, end to end.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
# in this order in `rlhf --help` (the groups, data and feedback, come after the commands)
train.register(app)
app.add_typer(data.app, name="data")
sample.register(app)
pipeline.register(app)
app.add_typer(feedback.app, name="feedback")

__all__ = ["app", "feedback_sampler", "main"]


def main() -> None:  # pragma: no cover - console-script entry
    app(prog_name="rlhf")
