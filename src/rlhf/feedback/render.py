"""Model text is untrusted: every text reaches the page as HTML made here, escaped.

``text`` campaigns show the text as written (escaped; the page keeps line breaks with CSS).
``markdown`` campaigns render CommonMark with raw HTML switched off, and the result still
passes through nh3 (the ammonia sanitiser), which keeps only formatting tags and drops any
script, event handler or ``javascript:`` link that got through.
"""

from __future__ import annotations

import html
from functools import lru_cache
from typing import Any

import nh3
from markdown_it import MarkdownIt

ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "del",
}  # fmt: skip


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def to_html(text: str, render: str = "text") -> str:
    """Safe HTML for one model or prompt text."""
    if render == "markdown":
        unsafe = _markdown().render(text)
        return nh3.clean(
            unsafe, tags=ALLOWED_TAGS, attributes={"a": {"href"}},
            url_schemes={"http", "https", "mailto"}, link_rel="noopener noreferrer nofollow",
        )  # fmt: skip
    return html.escape(text)


def prompt_view(prompt: Any, render: str) -> list[dict[str, str]]:
    """A prompt as messages with safe HTML: a plain prompt is one user message."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return [
        {"role": m["role"], "text": m["content"], "html": to_html(m["content"], render)}
        for m in messages
    ]
