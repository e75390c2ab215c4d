"""The one error every data problem raises, for a person: ``file:line: field: what is wrong``.

``reason`` is a short stable code that readers count skipped rows by:

========================  ====================================================================
``missing_field``         a field the row's kind needs is absent (or null, or an empty CSV cell)
``wrong_type``            a value of the wrong JSON type (text where a number belongs, ...)
``not_unicode``           text with a lone surrogate (a JSON ``\\ud800`` escape): not writable as
                          UTF-8, so no tokenizer can read it
``mixed_formats``         plain-text and message-list fields in one row
``empty_response``        an empty (or blank) completion, chosen, rejected, response, ...
``empty_text``            an empty ``text`` / ``messages`` language-modelling row
``chosen_equals_rejected``  a preference between two identical responses
``unknown_role``          a message role other than system, user, assistant
``too_few_responses``     a ranking of fewer than two responses
``ranks_mismatch``        a ranking whose ranks do not match its responses one to one
``labels_mismatch``       step labels that do not match the steps one to one (Math-Shepherd:
                          the step tags and the label marks)
``ranks_all_tied``        a ranking whose responses all share one rank (it orders nothing)
``rating_off_scale``      a score outside the row's rating scale
``missing_scale``         a rating with no scale in the row and none given to the reader
``mixed_scales``          ratings of one prompt on different scales
``bad_json``              a line or file that is not valid JSON
``bad_csv``               a CSV row that cannot be read (wrong number of cells, bad quoting)
``bad_file``              a file the reader cannot open or decode (not UTF-8, not Parquet, ...)
``unknown_format``        a row whose columns match no record kind, or an unsupported file type
``unknown_kind``          a record kind that does not exist
``not_convertible``       a record that a conversion cannot turn into the requested kind
``not_found``             a missing file, folder, split or hub dataset
``no_rows``               a source with no rows at all (an empty or blank file, a CSV header alone,
                          a JSON ``[]``, an empty Parquet file or dataset)
========================  ====================================================================
"""

from __future__ import annotations

import json
import reprlib
from typing import Any


class DataError(ValueError):
    """A problem with data; ``str(error)`` reads ``source:line: field: message``.

    Parts that are unknown (``None`` or empty) are left out, e.g. ``train.jsonl: not_found``
    problems have no line and no field.
    """

    def __init__(
        self,
        source: str | None,
        line: int | None,
        field: str | None,
        message: str,
        *,
        reason: str = "invalid",
    ) -> None:
        self.source = "" if source is None else str(source)
        self.line = line
        self.field = field
        self.message = message
        self.reason = reason
        location = self.source + (f":{line}" if line is not None else "")
        super().__init__(": ".join(part for part in (location, field, message) if part))

    def at(self, source: str, line: int | None) -> DataError:
        """The same problem located in ``source`` at ``line`` (for errors raised by conversions)."""
        return DataError(source, line, self.field, self.message, reason=self.reason)

    def __reduce__(self):  # picklable across worker processes despite the keyword-only reason
        return _rebuild, (self.source, self.line, self.field, self.message, self.reason)


def _rebuild(source: str, line: int | None, field: str | None, message: str, reason: str):
    return DataError(source, line, field, message, reason=reason)


_SHORT = reprlib.Repr()  # bounded in length and depth, whatever the value
_SHORT.maxstring = _SHORT.maxother = 40


def describe_value(value: Any) -> str:
    """A short view of a bad value for an error message (null and booleans as JSON writes
    them, anything else cut to a few dozen characters)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return _SHORT.repr(value)
