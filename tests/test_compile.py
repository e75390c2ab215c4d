from __future__ import annotations

import torch

from rlhf.data.collate import collate_padded
from rlhf.data.tokenize import tokenize_record
from rlhf.models.compile import compile_blocks, decoder_blocks
from rlhf.recipes.lm import lm_loss
from rlhf.sim.builtin import arithmetic


def test_compiled_blocks_give_the_eager_loss_and_gradients(tiny_model_dir, tiny_tokenizer):
    from rlhf.models.load import load_model

    batch = collate_padded(
        [tokenize_record(tiny_tokenizer, r) for r in arithmetic(4, seed=0)],
        tiny_tokenizer.pad_token_id,
    )
    eager, compiled = load_model(str(tiny_model_dir)), load_model(str(tiny_model_dir))
    assert decoder_blocks(compiled) is not None
    names_before = [name for name, _ in compiled.named_parameters()]
    assert compile_blocks(compiled)
    assert [
        name for name, _ in compiled.named_parameters()
    ] == names_before  # checkpoints still match
    for model in (eager, compiled):
        loss, _ = lm_loss(model, batch)
        loss.backward()
    torch.testing.assert_close(
        lm_loss(compiled, batch)[0], lm_loss(eager, batch)[0], rtol=1e-4, atol=1e-4
    )
    for p, q in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-5)
