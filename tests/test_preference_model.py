"""Pairwise preference models: the loss against hand-worked numbers, the sequence format, exact
antisymmetry of a random tiny model's probabilities, export and loading, the preference
functions of every kind and their config errors, and `rlhf pm --preset tiny` through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from rlhf.cli import app
from rlhf.config import ConfigError, validate_config
from rlhf.data.pairs import PreferenceGroup
from rlhf.data.pairwise import (
    FIRST_HEADER,
    SECOND_HEADER,
    collate_pairwise,
    pair_response,
    tokenize_pair,
    tokenize_pairwise,
)
from rlhf.data.records import Message
from rlhf.losses.preference_model import (
    antisymmetric_sigmoid,
    pairwise_preference_loss,
    preference_probability,
)
from rlhf.models.load import ModelLoadError, load_tokenizer, save_model
from rlhf.models.preference import (
    PREFERENCE_MODEL_KEY,
    PreferenceModel,
    init_preference_model,
    load_preference_model,
)
from rlhf.models.reward import init_reward_model, load_reward_model
from rlhf.rewards.base import FINISHED
from rlhf.rewards.preference import (
    FIRST,
    SECOND,
    BradleyTerryPreference,
    ModelPreference,
    PreferenceSpec,
    WorldGoldPreference,
    build_preference,
    call_preference,
    pair_metadata,
)
from rlhf.sim.gold import gold_score

CAT = "Tell me about the cat.\n"
SCENE = "The lazy cat sleeps under the sofa."
PORTRAIT = "The cat is very soft."
STORY = "Every day the cat purrs."
RESPONSES = [SCENE, PORTRAIT, STORY, "Let me think.", "The dog barks.", "I hope this helps."]

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)


# ---------------------------------------------------------------- the loss, by hand


def test_loss_against_numbers_worked_by_hand():
    forward = torch.tensor([2.0, 0.5, -1.0, 1.5])  # g(x, a, b)
    reverse = torch.tensor([1.0, 0.5, 1.0, 1.5 - math.log(3)])  # g(x, b, a)
    labels = torch.tensor([1.0, 1.0, 0.0, 0.25])
    # d = g(a, b) − g(b, a) = [1, 0, −2, ln 3]; loss = y·softplus(−d) + (1 − y)·softplus(d)
    #   pair 0: y = 1, d = 1:     ln(1 + e^−1)                     = 0.31326168751822286
    #   pair 1: y = 1, d = 0:     ln 2                             = 0.6931471805599453
    #   pair 2: y = 0, d = −2:    softplus(−2) = ln(1 + e^−2)      = 0.12692801104297263
    #   pair 3: y = ¼, P = ¾:     −¼ ln ¾ − ¾ ln ¼                 = 1.1116412889528632
    hand = [0.31326168751822286, 0.6931471805599453, 0.12692801104297263, 1.1116412889528632]
    loss, metrics = pairwise_preference_loss(forward, reverse, labels)
    assert loss.item() == pytest.approx(sum(hand), rel=1e-6)
    assert metrics["loss_sum"] == pytest.approx(sum(hand), rel=1e-6)
    assert metrics["pairs"] == 4.0
    # right, a tie (½), right (d < 0 with y = 0), wrong (d > 0 with y = ¼)
    assert metrics["correct_pairs"] == 2.5
    probabilities = preference_probability(forward, reverse)
    assert probabilities.tolist() == pytest.approx(
        [1 / (1 + math.exp(-1)), 0.5, 1 / (1 + math.exp(2)), 0.75], rel=1e-6
    )


def test_the_gradient_is_sigma_d_minus_y_on_each_order():
    forward = torch.tensor([2.0, -1.0], requires_grad=True)
    reverse = torch.tensor([1.0, 1.0], requires_grad=True)
    labels = torch.tensor([1.0, 0.0])
    loss, _ = pairwise_preference_loss(forward, reverse, labels)
    loss.backward()
    # ∂/∂g(a, b) = σ(d) − y, ∂/∂g(b, a) = −(σ(d) − y): d = [1, −2]
    expected = [1 / (1 + math.exp(-1)) - 1, 1 / (1 + math.exp(2))]
    assert forward.grad.tolist() == pytest.approx(expected, rel=1e-6)
    assert reverse.grad.tolist() == pytest.approx([-g for g in expected], rel=1e-6)


def test_the_loss_does_not_depend_on_the_order_a_pair_is_given_in():
    generator = torch.Generator().manual_seed(0)
    forward, reverse = torch.randn(64, generator=generator), torch.randn(64, generator=generator)
    labels = torch.rand(64, generator=generator)
    loss, metrics = pairwise_preference_loss(forward, reverse, labels)
    swapped, swapped_metrics = pairwise_preference_loss(reverse, forward, 1 - labels)
    assert loss.item() == pytest.approx(float(swapped), rel=1e-6)
    assert metrics["correct_pairs"] == swapped_metrics["correct_pairs"]


def test_probabilities_are_antisymmetric_exactly():
    generator = torch.Generator().manual_seed(1)
    forward = torch.randn(10_000, generator=generator) * 8
    reverse = torch.randn(10_000, generator=generator) * 8
    p, q = preference_probability(forward, reverse), preference_probability(reverse, forward)
    assert torch.equal(q, 1 - p) and torch.equal(p + q, torch.ones_like(p))
    assert bool(((p >= 0) & (p <= 1)).all())
    extremes = torch.tensor([0.0, 1e-8, 30.0, 200.0, -200.0])
    assert torch.equal(
        antisymmetric_sigmoid(extremes) + antisymmetric_sigmoid(-extremes), torch.ones(5)
    )


def test_loss_input_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"must both be \[P\]"):
        pairwise_preference_loss(torch.zeros(3), torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match=r"must both be \[P\]"):
        preference_probability(torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="labels"):
        pairwise_preference_loss(torch.zeros(3), torch.zeros(3), torch.ones(2))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        pairwise_preference_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 2.0]))


# ---------------------------------------------------------------- the sequence


def test_the_pair_text_format():
    assert FIRST_HEADER == "### Response A\n" and SECOND_HEADER == "\n### Response B\n"
    assert pair_response(CAT, SCENE, STORY) == (
        "### Response A\nThe lazy cat sleeps under the sofa.\n### Response B\nEvery day the cat purrs."
    )
    assert pair_response("Hi", "a", "b") == "\n### Response A\na\n### Response B\nb"
    messages = (Message("user", "Hi"),)
    assert pair_response(messages, "a", "b") == (
        Message("assistant", "### Response A\na\n### Response B\nb"),
    )
    # message-list responses enter as their assistant turns' text
    assert pair_response(messages, (Message("assistant", "a"),), "b")[0].content.startswith(
        "### Response A\na\n"
    )


def test_tokenised_pairs_hold_both_orders(tiny_tokenizer):
    ids, cut = tokenize_pair(tiny_tokenizer, CAT, SCENE, STORY)
    assert not cut and ids[-1] == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.decode(ids, skip_special_tokens=True) == CAT + pair_response(
        CAT, SCENE, STORY
    )
    group = PreferenceGroup(CAT, (SCENE, STORY, SCENE), (0, 0), (1, 2), (None, None))
    examples = tokenize_pairwise(tiny_tokenizer, [group], max_length=None)
    assert len(examples) == 1  # the pair of identical responses is dropped
    example = examples[0]
    assert example.label == 1.0
    assert list(example.forward) == ids
    assert list(example.reverse) == tokenize_pair(tiny_tokenizer, CAT, STORY, SCENE)[0]
    batch = collate_pairwise([example, example], tiny_tokenizer.pad_token_id)
    assert batch.input_ids.shape[0] == 4 and batch.loss_units == 2
    assert batch.input_ids[0, : len(ids)].tolist() == ids
    assert batch.input_ids[2, : len(example.reverse)].tolist() == list(example.reverse)
    assert batch.labels.tolist() == [1.0, 1.0]
    assert batch.num_tokens == 2 * (len(example.forward) + len(example.reverse))


# ---------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def tiny_pm(tiny_model_dir, tmp_path_factory):
    """A random tiny preference model (head initialised from seed 3), saved."""
    tokenizer = load_tokenizer(tiny_model_dir)
    model = init_preference_model(tiny_model_dir, tokenizer, seed=3)
    folder = tmp_path_factory.mktemp("pm") / "model"
    save_model(model, tokenizer, folder)
    return PreferenceModel(model, tokenizer), folder


def comparisons(n: int = 24) -> tuple[list[str], list[str], list[str]]:
    pairs = [(a, b) for a in RESPONSES for b in RESPONSES][:n]
    return [CAT] * len(pairs), [a for a, _ in pairs], [b for _, b in pairs]


def test_a_random_models_probabilities_are_antisymmetric_exactly(tiny_pm):
    pm, _ = tiny_pm
    prompts, first, second = comparisons(36)
    p = pm.preference_probability(prompts, first, second, batch_size=5)
    q = pm.preference_probability(prompts, second, first, batch_size=5)
    assert p.shape == (36,) and p.dtype == torch.float32 and p.device.type == "cpu"
    assert torch.equal(q, 1 - p) and torch.equal(p + q, torch.ones(36))
    assert bool(((p >= 0) & (p <= 1)).all())
    same = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if a == b]
    assert p[same].tolist() == [0.5] * len(same)
    # within one call too: the row (a, b) and the row (b, a)
    index = {(a, b): i for i, (a, b) in enumerate(zip(first, second, strict=True))}
    for (a, b), i in index.items():
        assert p[i] + p[index[(b, a)]] == 1.0
    # a random model is not symmetric itself: g(x, a, b) and g(x, b, a) differ
    g_ab = pm.pair_logits(prompts, first, second)
    g_ba = pm.pair_logits(prompts, second, first)
    assert not torch.allclose(g_ab, g_ba)
    assert p.tolist() == pytest.approx(torch.sigmoid(g_ab - g_ba).tolist(), abs=1e-5)
    assert len(set(p.tolist())) > 10


def test_the_folder_is_a_plain_marked_sequence_classifier(tiny_pm):
    from transformers import AutoModelForSequenceClassification

    pm, folder = tiny_pm
    config = json.loads((folder / "config.json").read_text())
    assert config[PREFERENCE_MODEL_KEY]["format"] == "pair-text-v1"
    assert config[PREFERENCE_MODEL_KEY]["first_header"] == FIRST_HEADER
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert len(config["id2label"]) == 1
    loaded = load_preference_model(folder)
    prompts, first, second = comparisons()
    assert torch.equal(
        loaded.preference_probability(prompts, first, second),
        pm.preference_probability(prompts, first, second),
    )
    # plain transformers reads g(x, a, b) as we do
    plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    ids = torch.tensor([tokenize_pair(loaded.tokenizer, CAT, SCENE, STORY)[0]])
    with torch.no_grad():
        g = plain(ids, attention_mask=torch.ones_like(ids)).logits[0, 0]
    assert float(g) == pytest.approx(float(pm.pair_logits([CAT], [SCENE], [STORY])[0]), abs=1e-5)


def test_reward_and_preference_loaders_refuse_each_others_folders(
    tiny_pm, tiny_model_dir, tmp_path
):
    _, folder = tiny_pm
    with pytest.raises(ModelLoadError, match=r"a pairwise preference model.*preference: \{model"):
        load_reward_model(folder)
    tokenizer = load_tokenizer(tiny_model_dir)
    rm_folder = tmp_path / "rm"
    save_model(init_reward_model(tiny_model_dir, tokenizer), tokenizer, rm_folder)
    with pytest.raises(ModelLoadError, match=r"no rlhf_pairwise_preference.*reward: \{model"):
        load_preference_model(rm_folder)
    with pytest.raises(ModelLoadError, match=r"not a pairwise preference model.*rlhf pm"):
        load_preference_model(tiny_model_dir)  # a causal LM
    config = json.loads((folder / "config.json").read_text())
    config[PREFERENCE_MODEL_KEY]["format"] = "pair-text-v9"
    changed = tmp_path / "changed"
    changed.mkdir()
    for path in folder.iterdir():
        (changed / path.name).write_bytes(path.read_bytes())
    (changed / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="sequence format this version does not read"):
        load_preference_model(changed)


def test_model_input_errors(tiny_pm):
    pm, _ = tiny_pm
    with pytest.raises(ValueError, match="2 prompts, 1 first and 2 second"):
        pm.preference_probability([CAT, CAT], [SCENE], [STORY, SCENE])
    with pytest.raises(ValueError, match="batch_size"):
        pm.preference_probability([CAT], [SCENE], [STORY], batch_size=0)


# ---------------------------------------------------------------- preference functions


def test_build_preference_for_a_model_folder(tiny_pm):
    pm, folder = tiny_pm
    preference = build_preference(PreferenceSpec(model=str(folder), device="cpu", batch_size=4))
    assert isinstance(preference, ModelPreference)
    prompts, first, second = comparisons()
    p = call_preference(preference, prompts, first, second)
    assert torch.equal(p, pm.preference_probability(prompts, first, second, batch_size=4))
    assert torch.equal(preference(prompts, second, first), 1 - p)


def test_build_preference_for_the_world_rule():
    preference = build_preference(PreferenceSpec(rule="world_gold", temperature=0.1))
    assert isinstance(preference, WorldGoldPreference)
    p = preference([CAT, CAT], [SCENE, PORTRAIT], [PORTRAIT, STORY])
    assert p.tolist() == [0.5, 0.5]  # equal gold, no cyclic term: Bradley–Terry says ½
    cyclic = build_preference(PreferenceSpec(rule="world_gold", temperature=0.1, nontransitive=0.3))
    assert all(v > 0.9 for v in cyclic([CAT, CAT], [SCENE, PORTRAIT], [PORTRAIT, STORY]).tolist())


def test_build_preference_for_a_reward_is_bradley_terry():
    spec = validate_config(
        PreferenceSpec, {"reward": {"rule": "world_gold"}, "temperature": 0.5}, "preference"
    )
    preference = build_preference(spec)
    assert isinstance(preference, BradleyTerryPreference)
    prompts, first, second = comparisons()
    p = preference(prompts, first, second)
    expected = [
        1 / (1 + math.exp(-(gold_score(CAT, a) - gold_score(CAT, b)) / 0.5))
        for a, b in zip(first, second, strict=True)
    ]
    assert p.tolist() == pytest.approx(expected, abs=1e-6)
    assert torch.equal(preference(prompts, second, first), 1 - p)


def test_a_bradley_terry_preference_gives_each_response_its_metadata():
    spec = PreferenceSpec(reward={"rule": "world_gold", "missing_eos_reward": -1.0})
    preference = build_preference(spec)
    finished = [{FINISHED: True}, {FINISHED: False}]
    unfinished = [{FINISHED: False}, {FINISHED: True}]
    metadata = pair_metadata(finished, unfinished)
    assert metadata[0] == {FIRST: {FINISHED: True}, SECOND: {FINISHED: False}}
    p = preference([CAT, CAT], [SCENE, SCENE], [STORY, STORY], metadata)
    gold = gold_score(CAT, SCENE)  # equal to STORY's
    # row 0: SCENE finished (gold) against STORY cut (−1); row 1 the other way round
    assert p.tolist() == pytest.approx(
        [1 / (1 + math.exp(-(gold + 1))), 1 / (1 + math.exp(gold + 1))]
    )
    swapped = preference(
        [CAT, CAT], [STORY, STORY], [SCENE, SCENE], pair_metadata(unfinished, finished)
    )
    assert torch.equal(swapped, 1 - p)
    with pytest.raises(ValueError, match="needs per-row metadata"):
        preference([CAT], [SCENE], [STORY])
    with pytest.raises(ValueError, match="2 comparisons but 1 metadata rows"):
        preference([CAT, CAT], [SCENE, SCENE], [STORY, STORY], metadata[:1])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "set exactly one of preference.model, preference.rule and preference.reward"),
        ({"model": "m", "rule": "world_gold"}, r"\(got model, rule\)"),
        ({"rule": "judge"}, "rule"),
        ({"reward": {"rule": "world_gold"}, "nontransitive": 0.3}, "preference.nontransitive"),
        ({"model": "m", "temperature": 0.5}, "preference.temperature"),
        ({"rule": "world_gold", "temperature": 0}, "temperature"),
        ({"rule": "world_gold", "nontransitive": -1}, "nontransitive"),
        ({"rule": "world_gold", "batch_size": 0}, "batch_size"),
        ({"rule": "world_gold", "device": "tpu"}, "device"),
        ({"reward": {}}, "reward"),
        ({"rule": "world_gold", "colour": "red"}, "colour"),
    ],
)
def test_preference_config_errors_name_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(PreferenceSpec, values, "preference")


def test_call_preference_checks_what_a_function_returns():
    with pytest.raises(ValueError, match="shape"):
        call_preference(lambda p, a, b, m=None: torch.zeros(3), [CAT], [SCENE], [STORY])
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        call_preference(lambda p, a, b, m=None: torch.tensor([1.5]), [CAT], [SCENE], [STORY])
    assert call_preference(lambda p, a, b, m=None: [0.25], [CAT], [SCENE], [STORY]).tolist() == [
        0.25
    ]


def test_a_model_preference_that_is_not_a_folder_fails_early(tmp_path):
    with pytest.raises(ModelLoadError):
        build_preference(PreferenceSpec(model=str(tmp_path / "missing")))


# ---------------------------------------------------------------- rlhf pm


def test_pm_help_lists_its_config_keys():
    result = invoke("pm", "--help")
    assert result.exit_code == 0
    for key in ("data.train", "data.max_length", "data.group_by_length", "model.lora"):
        assert key in result.output
    assert "pm" in invoke("--help").output


def test_pm_tiny_preset_through_the_cli(tmp_path):
    out = tmp_path / "pm"
    result = invoke("pm", "--preset", "tiny", f"out={out}", "progress=false", "tensorboard=false")
    assert result.exit_code == 0, result.output
    assert "held-out:" in result.output and "accuracy" in result.output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if row["split"] == "eval"]
    assert evals[-1]["accuracy"] > 0.55  # above chance on held-out prompts
    assert evals[-1]["loss"] < math.log(2)
    model = out / "model"
    assert PREFERENCE_MODEL_KEY in json.loads((model / "config.json").read_text())
    preference = build_preference(PreferenceSpec(model=str(model), device="cpu"))
    prompts, first, second = comparisons()
    p = preference(prompts, first, second)
    assert torch.equal(preference(prompts, second, first), 1 - p)
