"""``rlhf data check``: read a dataset the way training will and report what is in it."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rlhf.data.errors import DataError
from rlhf.data.readers import read_records
from rlhf.data.records import RecordKind


@dataclass
class CheckReport:
    """Rows per kind, skipped rows per reason, the first errors and a few example rows."""

    source: str
    kind_counts: Counter[str] = field(default_factory=Counter)  # loaded records per kind
    skipped: Counter[str] = field(default_factory=Counter)  # bad rows per DataError.reason
    errors: list[DataError] = field(default_factory=list)  # the first bad rows, file:line
    examples: list[tuple[str, str]] = field(default_factory=list)  # (kind, text as shown)

    @property
    def loaded(self) -> int:
        return self.kind_counts.total()

    @property
    def rows(self) -> int:
        return self.loaded + self.skipped.total()

    @property
    def ok(self) -> bool:
        return not self.skipped

    def render(self, console: Any) -> None:
        """Print the report on a ``rich.console.Console``."""
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        verdict = "[green]ok[/]" if self.ok else f"[red]{self.skipped.total():,} bad[/]"
        console.print(f"[bold]{self.source}[/]: {self.rows:,} rows, {verdict}", highlight=False)
        counts = Table("kind", "rows", title="records per kind", title_justify="left")
        for kind, count in self.kind_counts.most_common():
            counts.add_row(kind, f"{count:,}")
        console.print(counts)
        if self.skipped:
            reasons = Table("reason", "rows", title="bad rows per reason", title_justify="left")
            for reason, count in self.skipped.most_common():
                reasons.add_row(reason, f"{count:,}")
            console.print(reasons)
            console.print("[bold]first errors[/]")
            for error in self.errors:
                console.print(Text(f"  {error}", style="red"))
        for index, (kind, text) in enumerate(self.examples, 1):
            console.print(Panel(Text(text), title=f"example {index} ({kind})", title_align="left"))


def check_data(
    source: str | os.PathLike[str],
    kind: RecordKind | None = None,
    *,
    tokenizer: Any = None,
    columns: Mapping[str, str] | None = None,
    rating_scale: tuple[float, float] | None = None,
    split: str = "train",
    examples: int = 3,
    max_errors: int = 10,
) -> CheckReport:
    """Read ``source`` skipping bad rows, and report counts, the first ``max_errors`` errors and
    ``examples`` rows: as the model sees them when a ``tokenizer`` is given (chat template
    applied, trained-on parts in ``[[...]]``), else as their canonical JSON.

    A problem with the source as a whole (missing file, unreadable JSON) raises
    :class:`DataError`.
    """
    result = read_records(
        source, kind, columns=columns, skip_bad=True, rating_scale=rating_scale, split=split,
        max_errors=max_errors,
    )  # fmt: skip
    report = CheckReport(result.source, result.kind_counts, result.skipped, result.errors)
    for record in result.records[:examples]:
        report.examples.append((record.kind, _show(record, tokenizer)))
    return report


def _show(record: Any, tokenizer: Any) -> str:
    if tokenizer is None:
        return json.dumps(record.to_dict(), ensure_ascii=False, indent=2)
    from rlhf.data.tokenize import render_example

    try:
        return render_example(tokenizer, record)
    except Exception as error:  # a report shows a template that fails; it does not stop at it
        return f"(cannot render with this tokenizer: {error})"
