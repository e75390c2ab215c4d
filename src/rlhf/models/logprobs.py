"""Log-probabilities of the taken tokens, without a float32 copy of the whole logits tensor.

The plain way, ``logits.float().log_softmax(-1).gather(-1, index)``, materialises a float32
``[B, T, V]`` tensor (and autograd keeps it for the backward pass): with a 150k vocabulary that
is 600 KB per token. We only need ``log p(x) = logit(x) - logsumexp(logits)``, so:

* :func:`selective_log_softmax` gathers the taken logits and computes ``logsumexp`` a chunk of
  positions at a time (in float32 for half-precision logits), with a hand-written backward that
  rebuilds the softmax chunk by chunk and writes the gradient in the logits' own dtype. Peak
  extra memory is one float32 chunk, not ``[B, T, V]``.
* :func:`token_logprobs_from_hidden` goes one step further and never holds the logits at all:
  it applies the output layer to a chunk of positions, keeps the log-probs, drops the logits,
  and recomputes them in the backward pass (activation checkpointing); ignored positions
  (``labels == ignore_index``) are skipped entirely.

Pure torch; shapes use B batch, T tokens, V vocabulary, H hidden size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

# Elements of one float32 logsumexp chunk: 16M, i.e. 64 MB of scratch at most (at least one
# position per chunk, so larger when a single position holds more).
CHUNK_ELEMENTS = 1 << 24


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _SelectiveLogSoftmax(torch.autograd.Function):
    """``logits[..., t, index] - logsumexp(logits[..., t, :])``, chunked along dim -2."""

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor, chunk: int) -> Tensor:  # type: ignore[override]
        accumulate = _accumulation_dtype(logits.dtype)
        taken = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1).to(accumulate)  # [..., T]
        lse = torch.empty(index.shape, dtype=accumulate, device=logits.device)  # [..., T]
        for start in range(0, logits.shape[-2], chunk):
            part = logits[..., start : start + chunk, :].to(accumulate)
            lse[..., start : start + chunk] = torch.logsumexp(part, dim=-1)
        ctx.save_for_backward(logits, index, lse)
        ctx.chunk = chunk
        return taken - lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, index, lse = ctx.saved_tensors
        chunk = ctx.chunk
        grad_logits = torch.empty_like(logits)
        grad_out = grad_out.to(lse.dtype)
        # d/dlogits_j (logit_i - logsumexp) = [j == i] - softmax_j, built in place in the
        # gradient itself when it has the accumulation dtype: fresh [c, V] temporaries for
        # each of sub, exp and the copy cost four times the arithmetic on CPU
        for start in range(0, logits.shape[-2], chunk):
            rows = slice(start, start + chunk)
            g = grad_out[..., rows].unsqueeze(-1)  # [..., c, 1]
            target = grad_logits[..., rows, :]
            part = target if target.dtype == lse.dtype else target.to(lse.dtype)
            torch.sub(logits[..., rows, :], lse[..., rows].unsqueeze(-1), out=part)
            part.exp_().mul_(-g)  # −g · softmax
            part.scatter_add_(-1, index[..., rows].unsqueeze(-1), g)
            if part is not target:
                target.copy_(part)
        return grad_logits, None, None


def selective_log_softmax(
    logits: Tensor, index: Tensor, *, chunk_size: int | None = None
) -> Tensor:
    """Log-probabilities of the taken tokens.

    logits [B, T, V] (or any [..., T, V]), index [B, T] of token ids in ``[0, V)`` (replace
    ignore labels such as -100 before calling) -> [B, T], equal to
    ``log_softmax(logits.float(), -1).gather(-1, index[..., None])[..., 0]``.
    The result is float32 (float64 for float64 logits); the gradient reaches ``logits`` in
    their own dtype. ``chunk_size`` positions (along T) are reduced at a time; by default as
    many as fit :data:`CHUNK_ELEMENTS`.
    """
    if logits.dim() < 2 or logits.shape[:-1] != index.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} must be index {tuple(index.shape)} plus a vocabulary dim"
        )
    if chunk_size is None:
        per_position = max(1, logits[..., 0, :].numel())  # elements at one t across the batch
        chunk_size = max(1, CHUNK_ELEMENTS // per_position)
    return _SelectiveLogSoftmax.apply(logits, index.long(), max(1, int(chunk_size)))


def _head_logprobs(
    hidden: Tensor, labels: Tensor, lm_head: nn.Module, temperature: float
) -> Tensor:
    """hidden [N, H], labels [N] -> log p [N] through the output layer."""
    logits = lm_head(hidden)  # [N, V]
    if temperature != 1.0:
        logits = logits / temperature
    return selective_log_softmax(logits, labels)


def token_logprobs_from_hidden(
    hidden: Tensor,
    lm_head: nn.Module,
    labels: Tensor,
    *,
    chunk_size: int = 1024,
    ignore_index: int = -100,
    temperature: float = 1.0,
) -> Tensor:
    """Per-token log-probs of ``labels`` from final hidden states, without the full logits.

    hidden [B, T, H] (the decoder's last hidden states), lm_head (the output layer, usually an
    ``nn.Linear``), labels [B, T] already aligned with ``hidden`` (``labels[:, t]`` is the token
    predicted at position t, i.e. the input shifted left by one) -> [B, T] float32 (float64 for
    float64 input), 0 where ``labels == ignore_index``.

    Only the valid positions go through ``lm_head``, ``chunk_size`` at a time; with autograd
    each chunk's logits are recomputed in the backward pass instead of kept. ``temperature``
    divides the logits, matching log-probs to samples drawn at that temperature.
    """
    if hidden.dim() != 3 or hidden.shape[:2] != labels.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} must be [B, T, H] with labels {tuple(labels.shape)} [B, T]"
        )
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    batch, tokens, width = hidden.shape
    flat_hidden = hidden.reshape(batch * tokens, width)  # [B*T, H]
    flat_labels = labels.reshape(batch * tokens)  # [B*T]
    valid = (flat_labels != ignore_index).nonzero().squeeze(1)  # [N]
    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in lm_head.parameters())
    )
    pieces = []
    for start in range(0, valid.numel(), max(1, chunk_size)):
        positions = valid[start : start + chunk_size]
        chunk_hidden = flat_hidden.index_select(0, positions)  # [c, H]
        chunk_labels = flat_labels.index_select(0, positions).long()  # [c]
        if needs_grad:
            piece = checkpoint(
                _head_logprobs,
                chunk_hidden,
                chunk_labels,
                lm_head,
                temperature,
                use_reentrant=False,
            )
        else:
            piece = _head_logprobs(chunk_hidden, chunk_labels, lm_head, temperature)
        pieces.append(piece)
    out = torch.zeros(batch * tokens, dtype=_accumulation_dtype(hidden.dtype), device=hidden.device)
    if pieces:
        out = out.index_put((valid,), torch.cat(pieces))  # out of place, so autograd flows
    return out.view(batch, tokens)


def sequence_logprobs(token_logps: Tensor, mask: Tensor) -> Tensor:
    """Sum of token log-probs over the positions where ``mask`` is true.

    token_logps [B, T], mask [B, T] (bool or 0/1) -> [B]. Masked-out positions contribute 0
    even when their value is -inf or NaN.
    """
    return torch.where(mask.bool(), token_logps, torch.zeros_like(token_logps)).sum(-1)
