"""Chat templates: how a list of messages becomes the text a model reads.

A tokenizer's own ``chat_template`` always wins. Tokenizers without one (GPT-2 style models,
our tiny models) use :data:`DEFAULT_CHAT_TEMPLATE`, which renders::

    <|system|>
    You are helpful.
    <|user|>
    Hi!
    <|assistant|>
    Hello.<eos>

Every assistant turn ends with the tokenizer's EOS token, so a model trained on it learns to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- endif -%}\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>\n{%- endif -%}"
)


def chat_template_of(tokenizer: Any) -> str:
    """The template this tokenizer renders conversations with (its own, else the default)."""
    return getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE


def render_chat(
    tokenizer: Any, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = False
) -> str:
    """Render ``messages`` (``{"role", "content"}`` dicts) to text with the tokenizer's template."""
    return tokenizer.apply_chat_template(
        list(messages),
        chat_template=chat_template_of(tokenizer),
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
