"""Teacher forcing: per-token log-probs (and any per-token head) of given responses.

A response's tokens are scored by one forward pass over prompt + response, position ids
counted over real tokens only (as ``generate`` counts them), so a padded row scores exactly as
it would alone. Rows that answer the same prompt (a rollout's K samples) can share one copy of
the prompt (:class:`SharedPromptForced`), with the same numbers up to float rounding. Used by
rollouts (old log-probs), the reference model, the critic (:mod:`rlhf.models.value`) and every
policy update.

Shapes: B rows, P prompt tokens, R response tokens, T = P + R, H hidden size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhf.data.collate import IGNORE_INDEX
from rlhf.models.forward import decoder_hidden_states, has_plain_head, shares_prompt_prefix, unwrap
from rlhf.models.logprobs import selective_log_softmax, token_logprobs_from_hidden


def live_columns(mask: torch.Tensor) -> slice:
    """Columns of a left-padded [b, P] mask that hold a real token in some row."""
    used = mask.any(0).nonzero()
    return slice(int(used[0]) if used.numel() else mask.shape[1], mask.shape[1])


@dataclass(frozen=True)
class TeacherForced:
    """One forward pass's inputs over prompt + response rows, trimmed of all-padding columns.

    ``input_ids``, ``attention_mask``, ``position_ids`` [b, T] with T = (live prompt columns)
    + ``width``; position ids count real tokens only, as ``generate`` counts them. The
    position ``first + t`` reads the prefix before response token t: its logits predict that
    token, and a value head there gives V(s_t). ``response_ids`` / ``response_mask`` [b, width].
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    first: int  # the position that predicts the first response token
    width: int  # response columns kept (the longest response of these rows, at least 1)

    @classmethod
    def of(
        cls,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        device: torch.device,
    ) -> TeacherForced:
        """From left-padded prompts [b, P] and right-padded responses [b, R], on ``device``."""
        keep = live_columns(prompt_mask)  # drop columns of padding only
        width = max(int(response_mask.sum(-1).max()), 1)
        # masks as 0/1 long whatever they came as (a float loss mask is a valid response mask)
        prompt = prompt_ids[:, keep].to(device)
        p_mask = prompt_mask[:, keep].to(device=device, dtype=torch.long)
        response = response_ids[:, :width].to(device)
        r_mask = response_mask[:, :width].to(device=device, dtype=torch.long)
        attention_mask = torch.cat([p_mask, r_mask], dim=1)  # [b, T]
        return cls(
            input_ids=torch.cat([prompt, response], dim=1),
            attention_mask=attention_mask,
            position_ids=(attention_mask.long().cumsum(-1) - 1).clamp(min=0),
            response_ids=response,
            response_mask=r_mask,
            first=prompt.shape[1] - 1,
            width=width,
        )


@dataclass(frozen=True)
class SharedPromptForced:
    """One forward pass's inputs with each prompt read once: the rows answering one prompt
    packed into one sequence, the prompt then every response
    (:func:`rlhf.data.pairs.shared_prefix_rows` with ``next_token_targets``, the layout the
    DPO and reward-model recipes use for pairs), a 4-D mask letting each response see the
    prompt and itself only and positions restarting after the prompt, so every position's
    hidden state is that of :class:`TeacherForced` up to float rounding.

    ``input_ids``, ``position_ids`` [G, L] and ``attention_mask`` [G, 1, L, L] (G packed rows);
    ``index`` [b, width] the flat position in ``[G·L]`` whose hidden state reads the prefix
    before response token t of row b (that of :class:`TeacherForced` at ``first + t``; 0 off
    the mask); ``response_ids`` / ``response_mask`` [b, width].
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    index: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    width: int

    @classmethod
    def of(
        cls,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        response_ids: torch.Tensor,
        response_mask: torch.Tensor,
        groups: torch.Tensor,
        device: torch.device,
    ) -> SharedPromptForced:
        """From left-padded prompts [b, P], right-padded responses [b, R] and ``groups`` [b]
        (rows of one group share their prompt; a group may be any subset of rows). Rows
        without a response token are left out of the pass (their ``index`` is all 0)."""
        from rlhf.data.pairs import shared_prefix_rows

        width = max(int(response_mask.sum(-1).max()), 1)
        prompt_lengths = prompt_mask.sum(-1).tolist()
        lengths = response_mask[:, :width].sum(-1).tolist()
        members: dict[int, list[int]] = {}
        for row, group in enumerate(groups.tolist()):
            if lengths[row] > 0:
                members.setdefault(group, []).append(row)
        sequences = [
            [
                prompt_ids[row, prompt_mask.shape[1] - int(prompt_lengths[row]) :].tolist()
                + response_ids[row, : int(lengths[row])].tolist()
                for row in rows
            ]
            for rows in members.values()
        ]
        packed = shared_prefix_rows(sequences, 0, next_token_targets=True)
        row_length = packed.input_ids.shape[1]
        index = torch.zeros((len(groups), width), dtype=torch.long)
        t = torch.arange(width)
        for g, rows in enumerate(members.values()):
            prefix = packed.prefix_lengths[g]
            for k, row in enumerate(rows):
                # response token t is predicted at the column of sequence token P_row + t − 1
                source = t + int(prompt_lengths[row]) - 1
                suffix = packed.suffix_columns[g][k] + source - prefix
                column = torch.where(source < prefix, source, suffix)
                index[row] = (g * row_length + column) * (t < lengths[row])
        return cls(
            input_ids=packed.input_ids.to(device),
            attention_mask=packed.attention_mask.to(device),
            position_ids=packed.position_ids.to(device),
            index=index.to(device),
            response_ids=response_ids[:, :width].to(device),
            response_mask=response_mask[:, :width].to(device=device, dtype=torch.long),
            width=width,
        )

    def hidden_states(self, model: torch.nn.Module) -> torch.Tensor:
        """[b, width, H] the decoder's last hidden states at :attr:`index`."""
        hidden = decoder_hidden_states(
            model,
            input_ids=self.input_ids,
            attention_mask=self.attention_mask,
            position_ids=self.position_ids,
        )  # [G, L, H]
        return hidden.flatten(0, 1)[self.index]  # [b, width, H]


def shared_prompt_chunks(
    model: torch.nn.Module, groups: torch.Tensor | None, batch_size: int
) -> list[torch.Tensor] | None:
    """Row chunks for :class:`SharedPromptForced` passes of at most ``batch_size`` rows (a
    group larger than that alone), whole groups each; None when sharing gains nothing (no
    group of two rows) or ``model`` cannot read packed rows
    (:func:`rlhf.models.forward.shares_prompt_prefix`)."""
    if groups is None or len(groups) < 2:
        return None
    labels, counts = torch.unique(groups.cpu(), return_counts=True)
    if int(counts.max()) < 2 or not shares_prompt_prefix(model):
        return None
    chunks: list[torch.Tensor] = []
    current: list[torch.Tensor] = []
    size = 0
    for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
        if current and size + count > batch_size:
            chunks.append(torch.cat(current))
            current, size = [], 0
        current.append((groups.cpu() == label).nonzero().squeeze(1))
        size += count
    chunks.append(torch.cat(current))
    return chunks


def per_response_token(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    groups: torch.Tensor | None,
    batch_size: int,
    packed: Callable[[SharedPromptForced], torch.Tensor],
    rowwise: Callable[[TeacherForced], torch.Tensor],
) -> torch.Tensor:
    """[B, R] float32 of a quantity per response token, 0 past each response.

    When the model and the rows allow it (:func:`shared_prompt_chunks`), ``packed(inputs)``
    [b, width] over chunks of rows with each group's prompt read once
    (:class:`SharedPromptForced`); otherwise ``rowwise(inputs)`` [b, width] over
    ``batch_size`` rows at a time, one row per sample (:class:`TeacherForced`).
    """
    out = torch.zeros(response_ids.shape, dtype=torch.float32, device=response_ids.device)
    device = next(model.parameters()).device
    chunks = shared_prompt_chunks(model, groups, batch_size)
    if chunks is None:
        for start in range(0, response_ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            inputs = TeacherForced.of(
                prompt_ids[rows], prompt_mask[rows], response_ids[rows], response_mask[rows],
                device,
            )  # fmt: skip
            out[rows, : inputs.width] = rowwise(inputs).float().to(out.device)
        return out
    assert groups is not None
    for rows in chunks:
        rows = rows.to(response_ids.device)
        inputs = SharedPromptForced.of(
            prompt_ids[rows],
            prompt_mask[rows],
            response_ids[rows],
            response_mask[rows],
            groups[rows.to(groups.device)],
            device,
        )
        values = packed(inputs)  # [b, width]
        out = out.index_put(
            (rows[:, None], torch.arange(inputs.width, device=out.device)),
            values.float().to(out.device),
        )
    return out


def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    batch_size: int = 16,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token log-probs of the responses under ``model`` at ``temperature``.

    prompt_ids / prompt_mask [B, P] (left-padded), response_ids / response_mask [B, R]
    (right-padded) -> [B, R] float32 with ``log softmax(logits / T)[response token]`` on real
    response tokens and 0 elsewhere. One teacher-forced forward pass per ``batch_size`` rows,
    position ids counted over real tokens only (as ``generate`` counts them); the output layer
    runs only at response positions when the architecture allows. Differentiable: call under
    ``torch.no_grad()`` for rollouts, with gradients inside a policy update.

    ``groups`` [B] (optional) says which rows answer the same prompt (e.g. a rollout's
    ``prompt_index``): each group's prompt is then read once (:class:`SharedPromptForced`),
    with the same log-probs up to float rounding, when the model allows it.
    """
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")

    def packed_logps(packed: SharedPromptForced) -> torch.Tensor:
        labels = packed.response_ids.masked_fill(packed.response_mask == 0, IGNORE_INDEX)
        head = unwrap(model).get_output_embeddings()
        hidden = packed.hidden_states(model)
        return token_logprobs_from_hidden(hidden, head, labels, temperature=temperature)

    def rowwise_logps(inputs: TeacherForced) -> torch.Tensor:
        first, width, response = inputs.first, inputs.width, inputs.response_ids
        forward = {
            "input_ids": inputs.input_ids,
            "attention_mask": inputs.attention_mask,
            "position_ids": inputs.position_ids,
        }
        if has_plain_head(model):
            labels = torch.full_like(inputs.input_ids, IGNORE_INDEX)  # [b, T]: token t+1 at t
            labels[:, first : first + width] = response.masked_fill(
                inputs.response_mask == 0, IGNORE_INDEX
            )
            hidden = decoder_hidden_states(model, **forward)  # [b, T, H]
            head = unwrap(model).get_output_embeddings()
            token_logps = token_logprobs_from_hidden(hidden, head, labels, temperature=temperature)
            return token_logps[:, first : first + width]  # [b, width]
        logits = model(**forward, use_cache=False).logits[:, first : first + width]
        token_logps = selective_log_softmax(logits / temperature, response)  # [b, width]
        return token_logps * inputs.response_mask

    return per_response_token(
        model, prompt_ids, prompt_mask, response_ids, response_mask, groups, batch_size,
        packed_logps, rowwise_logps,
    )  # fmt: skip
