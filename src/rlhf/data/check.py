"""``rlhf data check``: read a dataset the way training will and report what is in it."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rlhf.data.errors import DataError
from rlhf.data.readers import read_records
from rlhf.data.records import (
    BinaryRecord,
    CompletionRecord,
    ConversationRecord,
    EditRecord,
    Message,
    PreferenceRecord,
    PromptRecord,
    RankingRecord,
    RatingRecord,
    Record,
    RecordKind,
    Text,
    TextRecord,
)
from rlhf.data.tokenize import (
    NO_CUT,
    Cut,
    TruncationReport,
    tokenize_prompt,
    tokenize_prompt_response_cut,
    tokenize_record,
)

# An example shows at most this much of a row, whatever its size: rendering a 50 MB field
# takes rich many minutes, and tokenising it with --model gigabytes.
SHOWN_CHARS = 2000  # characters of each text (each message's content)
SHOWN_ITEMS = 20  # messages of a conversation, responses of a ranking
EXAMPLES_AS_SEEN = (
    "examples as the model sees them (chat template applied); [[...]] marks the tokens "
    "trained on or compared: a completion, an assistant turn, each response of a pair"
)
EXAMPLES_AS_JSON = "examples as read (--model PATH shows them as that model will see them)"


@dataclass
class CheckReport:
    """Rows per kind, skipped rows per reason, the first errors and a few example rows."""

    source: str
    kind_counts: Counter[str] = field(default_factory=Counter)  # loaded records per kind
    skipped: Counter[str] = field(default_factory=Counter)  # bad rows per DataError.reason
    errors: list[DataError] = field(default_factory=list)  # the first bad rows, file:line
    examples: list[tuple[str, str]] = field(default_factory=list)  # (kind, text as shown)
    # what truncation to max_length would cut (with a tokenizer)
    truncation: TruncationReport | None = None
    rendered: bool = False  # examples as the model sees them (with a tokenizer), not as JSON

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
        if self.truncation is not None:
            console.print(f"truncation: {self.truncation.describe()}", highlight=False)
        if self.skipped:
            reasons = Table("reason", "rows", title="bad rows per reason", title_justify="left")
            for reason, count in self.skipped.most_common():
                reasons.add_row(reason, f"{count:,}")
            console.print(reasons)
            console.print("[bold]first errors[/]")
            for error in self.errors:
                console.print(Text(f"  {error}", style="red"))
        if self.examples:
            console.print(EXAMPLES_AS_SEEN if self.rendered else EXAMPLES_AS_JSON, highlight=False)
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
    max_length: int | None = None,
) -> CheckReport:
    """Read ``source`` skipping bad rows, and report counts, the first ``max_errors`` errors and
    ``examples`` rows: as the model sees them when a ``tokenizer`` is given (chat template
    applied, trained-on parts in ``[[...]]``), else as their canonical JSON. An example shows
    the first :data:`SHOWN_CHARS` characters of each text and :data:`SHOWN_ITEMS` messages or
    responses, with a note of what is left out. With a ``tokenizer`` and ``max_length``, every
    row is tokenised as training would and the report counts what truncation would cut
    (:func:`truncation_report`).

    A problem with the source as a whole (missing file, unreadable JSON, no rows) raises
    :class:`DataError`.
    """
    result = read_records(
        source, kind, columns=columns, skip_bad=True, rating_scale=rating_scale, split=split,
        max_errors=max_errors,
    )  # fmt: skip
    report = CheckReport(result.source, result.kind_counts, result.skipped, result.errors)
    report.rendered = tokenizer is not None
    if tokenizer is not None and max_length is not None:
        report.truncation = truncation_report(tokenizer, result.records, max_length)
    for record in result.records[:examples]:
        report.examples.append((record.kind, _show(record, tokenizer)))
    return report


def truncation_report(
    tokenizer: Any, records: Iterable[Record], max_length: int
) -> TruncationReport:
    """What ``data.max_length=max_length`` with the default ``truncate`` policy would cut of
    each row, tokenised as the recipes do (a row of several sequences, a pair or a ranking,
    counts its most cut one). Rows that cannot be tokenised count as dropped."""
    report = TruncationReport(max_length, "rows")
    for record in records:
        try:
            report.add(record_cut(tokenizer, record, max_length))
        except ValueError as error:  # an empty response, a template that refuses the row
            report.drop(f"cannot be tokenised ({error})"[:80])
    return report


def record_cut(tokenizer: Any, record: Record, max_length: int) -> Cut:
    """What truncation to ``max_length`` cuts of ``record``'s sequences (the largest cut)."""

    def pair(prompt: Text, *responses: Text) -> Cut:
        cut = NO_CUT
        for response in responses:
            cut |= tokenize_prompt_response_cut(tokenizer, prompt, response, max_length)[2]
        return cut

    if isinstance(record, CompletionRecord | ConversationRecord | TextRecord):
        return tokenize_record(tokenizer, record, max_length).cut
    if isinstance(record, PromptRecord):
        return tokenize_prompt(tokenizer, record.prompt, max_length)[1]
    if isinstance(record, PreferenceRecord):
        return pair(record.prompt, record.chosen, record.rejected)
    if isinstance(record, RankingRecord):
        return pair(record.prompt, *record.responses)
    if isinstance(record, RatingRecord):
        return pair(record.prompt, record.response)
    if isinstance(record, BinaryRecord):
        return pair(record.prompt, record.completion)
    if isinstance(record, EditRecord):
        return pair(record.prompt, record.edited, record.original)
    return NO_CUT


def _show(record: Record, tokenizer: Any) -> str:
    record, left_out = _shortened(record)
    notes = "".join(f"\n… {note} not shown" for note in left_out)
    if tokenizer is None:
        return json.dumps(record.to_dict(), ensure_ascii=False, indent=2) + notes
    from rlhf.data.tokenize import render_example

    try:
        return render_example(tokenizer, record) + notes
    except Exception as error:  # a report shows a template that fails; it does not stop at it
        return f"(cannot render with this tokenizer: {error})"


def _is_text(value: Any) -> bool:
    """Whether a record's field holds a Text: a string or a message list."""
    return isinstance(value, str) or (
        isinstance(value, tuple) and bool(value) and isinstance(value[0], Message)
    )


def _shortened(record: Record) -> tuple[Record, list[str]]:
    """``record`` cut to what an example shows, and what was left out (``"prompt: 9,000
    more characters"``)."""
    left_out: list[str] = []

    def cut(items: tuple, name: str, what: str) -> tuple:
        if len(items) > SHOWN_ITEMS:
            left_out.append(f"{name}: {len(items) - SHOWN_ITEMS:,} more {what}")
        return items[:SHOWN_ITEMS]

    def text(value: Text, name: str) -> Text:
        if isinstance(value, str):
            if len(value) > SHOWN_CHARS:
                left_out.append(f"{name}: {len(value) - SHOWN_CHARS:,} more characters")
            return value[:SHOWN_CHARS]
        messages = cut(value, name, "messages")
        return tuple(
            Message(m.role, text(m.content, f"{name}[{i}].content")) for i, m in enumerate(messages)
        )

    changes: dict[str, Any] = {}
    for spec in dataclasses.fields(record):
        value = getattr(record, spec.name)
        if spec.name == "responses":  # a ranking: its ranks are cut along with the responses
            responses = cut(value, "responses", "responses")
            changes["responses"] = tuple(
                text(response, f"responses[{i}]") for i, response in enumerate(responses)
            )
            changes["ranks"] = record.ranks[:SHOWN_ITEMS]  # type: ignore[union-attr]
        elif _is_text(value):
            changes[spec.name] = text(value, spec.name)
    return dataclasses.replace(record, **changes), left_out
