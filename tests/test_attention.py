"""``rlhf.models.attention.upcast_cpu_attention``: under bf16 autocast on a CPU, transformers'
sdpa attention hands torch's kernel fp32 queries, keys and values (its bf16 backward is
several times slower), and leaves fp32 calls alone."""

from __future__ import annotations

import torch

from rlhf.models.attention import upcast_cpu_attention


def test_attention_kernel_gets_fp32_under_cpu_autocast(tiny_model_dir, monkeypatch):
    from rlhf.models.load import load_model

    upcast_cpu_attention()
    kernel = torch.nn.functional.scaled_dot_product_attention
    seen = []

    def recording(query, key, value, *args, **kwargs):
        seen.append((query.dtype, key.dtype, value.dtype, torch.is_autocast_enabled("cpu")))
        return kernel(query, key, value, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    model = load_model(str(tiny_model_dir))
    ids = torch.randint(3, 50, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # padding: a real mask reaches the kernel
    plain = model(input_ids=ids, attention_mask=mask).logits
    assert seen and all(dtypes == (torch.float32,) * 3 + (False,) for dtypes in seen)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(input_ids=ids, attention_mask=mask).logits
    assert seen and all(dtypes == (torch.float32,) * 3 + (False,) for dtypes in seen)
    mixed.float().sum().backward()  # the backward goes through the fp32 kernel too
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    real = mask.bool()
    torch.testing.assert_close(mixed.float()[real], plain[real], atol=0.1, rtol=0.05)
