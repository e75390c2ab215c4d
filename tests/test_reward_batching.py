"""Reward-model batching: shared-prompt rows for decoders and length-grouped batches."""

from __future__ import annotations

import pytest
import torch

from rlhf.data.convert import as_preferences
from rlhf.data.pairs import (
    collate_groups,
    collate_groups_shared_prefix,
    group_pairs,
    tokenize_groups,
)
from rlhf.data.records import PreferenceRecord, RankingRecord
from rlhf.engine.loader import ResumableLoader
from rlhf.models.forward import shares_prompt_prefix
from rlhf.models.reward import (
    init_reward_model,
    packed_reward_logits,
    reward_logits,
)

RECORDS = [
    RankingRecord("Hi there, how are", (" you?", " things?", " you doing?"), (0, 1, 2)),
    PreferenceRecord("2+2?", " 4", " 5", margin=1.0),
    PreferenceRecord("A longer prompt about the sea and the harbor.", " Yes.", " No, never."),
]


# eager: transformers' eager kernel adds a custom 4-D mask to the scores, so a bool mask passed
# as it is would let every packed response attend to the others
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prefix_rows_give_the_rewards_and_gradients_of_one_row_per_response(
    tiny_model_dir, tiny_tokenizer, attention
):
    model = init_reward_model(tiny_model_dir, tiny_tokenizer, attn_implementation=attention)
    assert shares_prompt_prefix(model)
    groups = tokenize_groups(tiny_tokenizer, group_pairs(as_preferences(RECORDS)), 64)
    plain = collate_groups(groups, tiny_tokenizer.pad_token_id)
    packed = collate_groups_shared_prefix(groups, tiny_tokenizer.pad_token_id)
    assert packed.input_ids.shape[0] == len(groups) and packed.attention_mask.ndim == 4
    assert packed.num_tokens < plain.num_tokens  # each prompt once
    assert torch.equal(packed.chosen_index, plain.chosen_index)
    assert torch.equal(packed.rejected_index, plain.rejected_index)
    expected = reward_logits(model, plain.input_ids, plain.attention_mask)
    expected.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got = packed_reward_logits(
        model, packed.input_ids, packed.attention_mask, packed.position_ids, packed.response_end
    )
    got.sum().backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    for grad, parameter in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(parameter.grad, grad, atol=1e-4, rtol=1e-4)


def test_length_grouped_loader_is_a_resumable_permutation_of_similar_lengths():
    lengths = [
        int(x) for x in torch.randint(1, 500, (403,), generator=torch.Generator().manual_seed(1))
    ]
    make = lambda: ResumableLoader(  # noqa: E731
        list(range(403)), 8, list, seed=3, lengths=lengths, group_batches=10
    )
    loader = make()
    batches = [loader.next_batch() for _ in range(len(loader))]
    seen = [i for batch in batches for i in batch]
    assert len(loader) == 50 and len(set(seen)) == len(seen) == 400
    plain = ResumableLoader(list(range(403)), 8, list, seed=3)
    padded = lambda bs: sum(len(b) * max(lengths[i] for i in b) for b in bs)  # noqa: E731
    assert padded(batches) < 0.8 * padded([plain.next_batch() for _ in range(50)])
    resumed = make()
    resumed.load_state_dict({"epoch": 0, "position": 20, "seed": 3})
    assert resumed.next_batch() == batches[20]
