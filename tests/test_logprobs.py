"""Log-prob helpers against the plain log_softmax + gather, values and gradients."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from rlhf.models.logprobs import (
    selective_log_softmax,
    sequence_logprobs,
    token_logprobs_from_hidden,
)


def naive_logprobs(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, index.unsqueeze(-1)).squeeze(-1)


def make_logits(shape: tuple[int, ...], dtype: torch.dtype = torch.float32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = (torch.randn(shape, generator=generator) * 3).to(dtype).requires_grad_()
    index = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    return logits, index


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_selective_log_softmax_matches_naive(chunk_size, dtype):
    logits, index = make_logits((3, 7, 50), dtype)
    ours = selective_log_softmax(logits, index, chunk_size=chunk_size)
    expected = torch.log_softmax(logits, -1).gather(-1, index.unsqueeze(-1)).squeeze(-1)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, expected)

    upstream = torch.randn(ours.shape, dtype=dtype)
    (grad_ours,) = torch.autograd.grad(ours, logits, upstream)
    (grad_expected,) = torch.autograd.grad(expected, logits, upstream)
    torch.testing.assert_close(grad_ours, grad_expected)


def test_selective_log_softmax_gradcheck():
    logits, index = make_logits((2, 5, 9), torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: selective_log_softmax(x, index, chunk_size=2), (logits,)
    )


def test_selective_log_softmax_bfloat16_accumulates_in_float32():
    logits, index = make_logits((2, 6, 300), torch.bfloat16)
    ours = selective_log_softmax(logits, index, chunk_size=4)
    expected = naive_logprobs(logits, index)  # from the same bf16 values, upcast
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)

    upstream = torch.randn(ours.shape)
    (grad_ours,) = torch.autograd.grad(ours, logits, upstream)
    (grad_expected,) = torch.autograd.grad(expected, logits, upstream)
    assert grad_ours.dtype == torch.bfloat16
    torch.testing.assert_close(grad_ours.float(), grad_expected.float(), atol=1e-2, rtol=1e-2)


def test_selective_log_softmax_on_shifted_view_and_2d():
    logits, index = make_logits((2, 8, 20))
    shifted = logits[:, :-1]  # the usual causal shift: a non-contiguous view
    targets = index[:, 1:]
    torch.testing.assert_close(
        selective_log_softmax(shifted, targets, chunk_size=3), naive_logprobs(shifted, targets)
    )
    flat = logits.detach().reshape(-1, 20)
    torch.testing.assert_close(
        selective_log_softmax(flat, index.reshape(-1)), naive_logprobs(flat, index.reshape(-1))
    )


def test_selective_log_softmax_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="vocabulary dim"):
        selective_log_softmax(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


def naive_from_hidden(hidden, head, labels, ignore_index=-100, temperature=1.0):
    safe = labels.clamp(min=0)
    logps = naive_logprobs(head(hidden) / temperature, safe)
    return torch.where(labels == ignore_index, torch.zeros_like(logps), logps)


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_from_hidden_matches_naive(chunk_size, temperature):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=True)
    hidden = torch.randn(3, 9, 16, requires_grad=True)
    labels = torch.randint(0, 40, (3, 9))
    labels[0, :4] = -100  # a prompt
    labels[2, 6:] = -100  # padding

    ours = token_logprobs_from_hidden(
        hidden, head, labels, chunk_size=chunk_size, temperature=temperature
    )
    expected = naive_from_hidden(hidden, head, labels, temperature=temperature)
    torch.testing.assert_close(ours, expected)
    assert (ours[labels == -100] == 0).all()

    upstream = torch.randn(ours.shape)
    params = (hidden, head.weight, head.bias)
    grads_ours = torch.autograd.grad(ours, params, upstream)
    grads_expected = torch.autograd.grad(expected, params, upstream)
    for ours_grad, expected_grad in zip(grads_ours, grads_expected, strict=True):
        torch.testing.assert_close(ours_grad, expected_grad)


def test_token_logprobs_from_hidden_no_grad_and_all_ignored():
    head = torch.nn.Linear(8, 30, bias=False)
    hidden = torch.randn(2, 5, 8)
    labels = torch.randint(0, 30, (2, 5))
    with torch.no_grad():
        ours = token_logprobs_from_hidden(hidden, head, labels, chunk_size=3)
        torch.testing.assert_close(ours, naive_from_hidden(hidden, head, labels))
    ignored = torch.full((2, 5), -100)
    assert torch.equal(token_logprobs_from_hidden(hidden, head, ignored), torch.zeros(2, 5))


def test_token_logprobs_from_hidden_bfloat16():
    torch.manual_seed(1)
    head = torch.nn.Linear(16, 64, bias=False).to(torch.bfloat16)
    hidden = torch.randn(2, 6, 16, dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 64, (2, 6))
    ours = token_logprobs_from_hidden(hidden, head, labels, chunk_size=5)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, naive_from_hidden(hidden, head, labels))
    ours.sum().backward()
    assert hidden.grad is not None and hidden.grad.dtype == torch.bfloat16
    assert head.weight.grad is not None


def test_sequence_logprobs_sums_masked_tokens_only():
    token_logps = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, float("nan"), -0.25]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    torch.testing.assert_close(sequence_logprobs(token_logps, mask), torch.tensor([-3.0, -0.75]))


def saved_tensors_during(fn):
    """(dtype, numel) of every tensor autograd saves for the backward pass while ``fn`` runs."""
    saved = []

    def pack(tensor):
        saved.append((tensor.dtype, tensor.numel()))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return saved


def test_no_float32_copy_of_the_logits_is_kept_for_backward():
    logits, index = make_logits((2, 16, 500), torch.bfloat16)
    saved = saved_tensors_during(lambda: selective_log_softmax(logits, index))
    full = logits.numel()
    assert not [entry for entry in saved if entry[0] == torch.float32 and entry[1] >= full]

    head = torch.nn.Linear(8, 500)
    hidden = torch.randn(2, 16, 8, requires_grad=True)
    saved = saved_tensors_during(
        lambda: token_logprobs_from_hidden(hidden, head, index, chunk_size=4)
    )
    # checkpointed chunks keep their inputs, never a [chunk, V] block of logits
    assert max(numel for _, numel in saved) < 4 * 500


def test_logprobs_module_is_pure_torch():
    import rlhf.models.logprobs as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in imported if name}
    assert roots <= {"__future__", "torch"}
