"""Value models: loading from a policy (fresh head) or a reward-model folder (head kept), and
per-token values that agree with transformers' own reading of each prefix."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.data.collate import collate_prompts_left
from rlhf.models.load import ModelLoadError, load_tokenizer, save_model
from rlhf.models.reward import init_reward_head, init_reward_model, reward_logits
from rlhf.models.tiny import make_tiny_model
from rlhf.models.value import load_value_model, response_values, value_head

from .conftest import TINY_SIZES, sample_texts


@pytest.fixture(scope="module")
def critic(tiny_model_dir, tiny_tokenizer):
    return load_value_model(tiny_model_dir, tiny_tokenizer, seed=5)


def _rows(tokenizer, pairs):
    """Left-padded prompts and right-padded responses [B, P], [B, R] of (prompt, response) ids."""
    prompt_ids, prompt_mask = collate_prompts_left(
        [prompt for prompt, _ in pairs], tokenizer.pad_token_id
    )
    width = max(len(response) for _, response in pairs)
    response_ids = torch.full((len(pairs), width), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (_, response) in enumerate(pairs):
        response_ids[row, : len(response)] = torch.tensor(response)
        response_mask[row, : len(response)] = 1
    return prompt_ids, prompt_mask, response_ids, response_mask


def _pairs(tokenizer):
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [
        (encode("What is 2 + 2?\n"), [*encode("2 + 2 = 4"), tokenizer.eos_token_id]),
        (encode("Hi"), encode("Once upon a time there was a cat")),
        (encode("What is 10 + 10?\n"), [*encode("20"), tokenizer.eos_token_id]),
    ]


def test_a_policy_gets_a_fresh_scaled_head(critic, tiny_tokenizer):
    assert type(critic).__name__ == "LlamaForSequenceClassification"
    head = value_head(critic)
    expected = torch.nn.Linear(head.in_features, 1, bias=False)
    init_reward_head(expected, seed=5)
    torch.testing.assert_close(head.weight, expected.weight)
    assert head.weight.std().item() == pytest.approx(1 / math.sqrt(head.in_features + 1), rel=0.5)
    assert critic.config.pad_token_id == tiny_tokenizer.pad_token_id


def test_values_are_the_scores_of_each_prefix(critic, tiny_tokenizer):
    """V(s_t) = the head at the last token of prompt + response[:t], as transformers reads it,
    whatever the padding around the row."""
    pairs = _pairs(tiny_tokenizer)
    with torch.no_grad():
        values = response_values(critic, *_rows(tiny_tokenizer, pairs), batch_size=2)  # [3, R]
    assert values.dtype == torch.float32
    for row, (prompt, response) in enumerate(pairs):
        for t in range(len(response)):
            ids = torch.tensor([prompt + response[:t]])
            with torch.no_grad():
                expected = reward_logits(critic, ids, torch.ones_like(ids))
            assert values[row, t].item() == pytest.approx(expected.item(), abs=1e-5)
        assert (values[row, len(response) :] == 0).all()


def test_values_train_backbone_and_head(critic, tiny_tokenizer):
    rows = _rows(tiny_tokenizer, _pairs(tiny_tokenizer))
    critic.zero_grad()
    values = response_values(critic, *rows)
    (values * rows[3]).sum().backward()
    assert value_head(critic).weight.grad.abs().sum() > 0
    embeddings = critic.get_input_embeddings().weight
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    critic.zero_grad()


def test_loads_from_a_reward_model_folder_keeping_its_head(
    tmp_path, tiny_model_dir, tiny_tokenizer
):
    reward_model = init_reward_model(tiny_model_dir, tiny_tokenizer, seed=1)
    with torch.no_grad():
        value_head(reward_model).weight.fill_(0.25)
    folder = save_model(reward_model, tiny_tokenizer, tmp_path / "rm")
    critic = load_value_model(folder, load_tokenizer(folder), seed=9)
    torch.testing.assert_close(value_head(critic).weight, value_head(reward_model).weight)
    for name, parameter in reward_model.state_dict().items():
        torch.testing.assert_close(critic.state_dict()[name], parameter, msg=name)


def test_a_reward_model_with_another_vocabulary_is_refused(tmp_path, tiny_tokenizer):
    other = make_tiny_model(
        tmp_path / "other", [text.upper() for text in sample_texts()], **TINY_SIZES
    )
    with pytest.raises(ModelLoadError, match="policy's vocabulary"):
        load_value_model(other, tiny_tokenizer)


def test_a_model_without_a_score_head_is_not_a_value_model(tiny_model_dir):
    from rlhf.models.load import load_model

    with pytest.raises(ValueError, match="cannot be a value model"):
        value_head(load_model(tiny_model_dir))
