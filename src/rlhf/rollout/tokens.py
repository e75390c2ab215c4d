"""Tokens in and out of a generation engine: prompt ids, stop ids, response text.

Correctness details (see the design notes):

* Prompts are tokenised exactly as training tokenises the prompt part of an example (BOS by
  the tokenizer's convention, the chat template with its generation prompt for message
  lists): :func:`prompt_token_ids`. The engine left-pads them, so every row's next token sits
  in the same column.
* A response ends at EOS: the tokenizer's and any the model's generation config lists
  (:func:`stop_token_ids`). PAD is never an EOS id (the engine refuses a tokenizer that pads
  with one), so padding can never be mistaken for a stop.
* A response's text is decoded as it continues its prompt (:func:`decode_continuation`), so a
  SentencePiece tokenizer keeps the space before its first word.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from rlhf.data.records import Text
from rlhf.data.tokenize import tokenize_prompt
from rlhf.models.forward import unwrap

logger = logging.getLogger("rlhf.rollout")


def prompt_token_ids(tokenizer: Any, prompt: Text, max_tokens: int | None = None) -> list[int]:
    """The token ids a response is generated after (:func:`rlhf.data.tokenize.tokenize_prompt`:
    training's tokenisation; with ``max_tokens``, a longer prompt keeps its last tokens)."""
    return tokenize_prompt(tokenizer, prompt, max_tokens)[0]


def prompt_room(positions: int | None, max_new_tokens: int) -> int | None:
    """How many prompt tokens fit beside ``max_new_tokens`` in ``positions`` (None: the model
    does not say, no limit)."""
    if positions is None:
        return None
    if positions <= max_new_tokens:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
            f"{positions} positions"
        )
    return positions - max_new_tokens


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Text], room: int | None, max_new_tokens: int
) -> tuple[list[list[int]], int]:
    """Each prompt's token ids (a longer one keeps its last ``room`` tokens) and how many were
    cut. The first cut of a run warns (once per tokenizer: a recipe builds several engines on
    one, training and each evaluation); later ones are only counted
    (``RolloutBatch.truncated_prompts``). An empty prompt is an error."""
    encoded, cuts = zip(*(tokenize_prompt(tokenizer, p, room) for p in prompts), strict=True)
    truncated = sum(map(bool, cuts))
    if truncated and not getattr(tokenizer, "_rlhf_warned_prompt_cut", False):
        tokenizer._rlhf_warned_prompt_cut = True
        logger.warning(
            "%d of %d prompts are longer than the %d tokens the model's positions leave "
            "beside max_new_tokens=%d: their start was cut (up to %d tokens); from now on "
            "counted (an online run's rollout_truncated_prompts) without this warning",
            truncated, len(prompts), room, max_new_tokens, max(cut.tokens for cut in cuts),
        )  # fmt: skip
    empty = [index for index, ids in enumerate(encoded) if not ids]
    if empty:
        raise ValueError(f"prompt {empty[0]} is empty after tokenisation")
    return [list(ids) for ids in encoded], truncated


def stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """EOS ids that end a response: the tokenizer's and those of the model's generation config
    (chat models often list their end-of-turn token there)."""
    return stop_ids_of(tokenizer, getattr(unwrap(model), "generation_config", None))


def stop_ids_of(tokenizer: Any, generation_config: Any) -> list[int]:
    """The tokenizer's EOS id, then any other the generation config (or None) lists."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    extra = getattr(generation_config, "eos_token_id", None)
    for token in [extra] if isinstance(extra, int) else list(extra or []):
        if token not in ids:
            ids.append(int(token))
    return ids


def cut_at_first_stop(
    chunks: Sequence[torch.Tensor], stop_ids: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generated chunks [b_i, r_i] -> response ids and mask [B, R] and ended [B].

    Everything after a row's first stop id becomes padding; a row without one ran to the end
    of its chunk (the engines stop a row early only at a stop id) and is not ``ended``.
    """
    stops = torch.tensor(list(stop_ids))
    lengths, ended = [], []
    for chunk in chunks:
        is_stop = torch.isin(chunk, stops)  # [b, r]
        has_stop = is_stop.any(-1)  # [b]
        first = is_stop.int().argmax(-1)  # [b] first stop (0 when none)
        lengths.append(torch.where(has_stop, first + 1, chunk.shape[1]))
        ended.append(has_stop)
    length = torch.cat(lengths)  # [B]
    width = max(int(length.max()), 1)
    response_ids = torch.full((len(length), width), pad_id, dtype=torch.long)
    row = 0
    for chunk in chunks:
        columns = min(chunk.shape[1], width)
        response_ids[row : row + len(chunk), :columns] = chunk[:, :columns]
        row += len(chunk)
    response_mask = (torch.arange(width) < length[:, None]).long()  # [B, R]
    response_ids = response_ids.masked_fill(response_mask == 0, pad_id)
    return response_ids, response_mask, torch.cat(ended)


def decode_continuation(tokenizer: Any, prompt_ids: list[int], response_ids: list[int]) -> str:
    """The response's text as it continues the prompt (special tokens skipped).

    Decoding the response tokens alone loses what depends on their left context: a
    SentencePiece tokenizer drops the leading space of the first word ("▁loved" decodes to
    "loved", so prompt + response would read "Sheloved"). Decoding prompt and response together
    and removing the decoded prompt keeps it; where that is not prefix-stable, the response is
    decoded alone.
    """
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    whole = tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=True)
    if whole.startswith(head):
        return whole[len(head) :]
    return tokenizer.decode(response_ids, skip_special_tokens=True)


def response_texts(
    tokenizer: Any,
    encoded: Sequence[list[int]],
    prompt_index: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    ended: torch.Tensor,
) -> list[str]:
    """[B] each row's response text, the stop token left out, decoded as it continues its
    prompt (``encoded[prompt_index[row]]``; :func:`decode_continuation`)."""
    return [
        decode_continuation(tokenizer, encoded[prompt], ids[: int(length) - int(stop)])
        for prompt, ids, length, stop in zip(
            prompt_index.tolist(), response_ids.tolist(), response_mask.sum(-1), ended, strict=True
        )
    ]


# tokens of left context decoded with each token when measuring its text: enough for a
# multi-byte character or a merged piece to come out whole, far fewer than a whole prefix
TEXT_END_WINDOW = 8


def token_text_ends(
    tokenizer: Any, response_ids: torch.Tensor, response_mask: torch.Tensor, texts: Sequence[str]
) -> list[list[int]]:
    """For each response (ids [B, R], mask [B, R], its decoded text), the length of the text
    its first t + 1 tokens decode to, t = 0 .. len − 1: token t is where text position
    ``ends[t] − 1`` is complete.

    Each token's text is measured in a short window of the tokens before it (decode(window +
    token) − decode(window), :data:`TEXT_END_WINDOW` tokens, one batched call for all), so the
    cost grows with B·R, not with B·R² as decoding every prefix would. The running sums are
    shifted by what decoding the response alone misses of ``texts`` (the leading space
    :func:`decode_continuation` keeps) and capped at the text's length; ends never decrease (a
    token that completes a multi-byte character mid-way decodes to a replacement character)."""
    lengths = response_mask.sum(-1).tolist()
    rows = [response_ids[b, :length].tolist() for b, length in enumerate(lengths)]
    windows = []
    for row in rows:
        for t in range(len(row)):
            start = max(0, t - TEXT_END_WINDOW)
            windows += [row[start : t + 1], row[start:t]]
    decoded = iter(tokenizer.batch_decode(windows, skip_special_tokens=True) if windows else [])
    out = []
    for row, text in zip(rows, texts, strict=True):
        ends, total = [], 0
        for _ in row:
            with_token, without = next(decoded), next(decoded)
            total += max(0, len(with_token) - len(without))
            ends.append(total)
        shift = len(text) - (ends[-1] if ends else 0)
        running, clean = 0, []
        for end in ends:
            running = max(running, min(len(text), max(0, end + shift)))
            clean.append(running)
        out.append(clean)
    return out
