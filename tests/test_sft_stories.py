"""SFT on a real pretrained model (stories260K) lowers held-out loss; the output reloads."""

from __future__ import annotations

import random

import torch

from rlhf.recipes.sft import SFTConfig, run_sft

from .conftest import STORIES, require_shared

NAMES = ["Tom", "Lily", "Ben", "Sue", "Max", "Anna", "Tim", "Mia"]
THINGS = ["ball", "cat", "hat", "box", "car", "dog", "cup", "kite"]
COLORS = ["red", "blue", "green", "big", "small", "yellow"]


def demonstrations(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name, thing, color = rng.choice(NAMES), rng.choice(THINGS), rng.choice(COLORS)
        rows.append(
            {
                "prompt": f"{name} had a {color} {thing}. What did {name} have?",
                "completion": f" {name} had a {color} {thing}.",
            }
        )
    return rows


def test_sft_lowers_held_out_loss_and_reloads(tmp_path):
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    stories = require_shared(STORIES)
    train, held_out = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in demonstrations(300, seed=0)))
    held_out.write_text("\n".join(json.dumps(r) for r in demonstrations(40, seed=1)))
    config = SFTConfig.model_validate(
        {
            "model": {"path": str(stories)},
            "data": {"train": str(train), "eval": str(held_out), "max_length": 64},
            "train": {
                "max_steps": 40,
                "batch_size": 16,
                "lr": 2e-3,
                "warmup_steps": 4,
                "eval_every": 40,
            },
            "out": str(tmp_path / "run"),
            "progress": False,
            "tensorboard": False,
        }
    )
    # the base model's held-out completion loss, measured the same way as the recipe's eval
    from rlhf.data.records import CompletionRecord
    from rlhf.data.tokenize import tokenize_record
    from rlhf.models.load import load_model, load_tokenizer
    from rlhf.recipes.lm import held_out_loss, make_loader

    tokenizer = load_tokenizer(str(stories))
    base = load_model(str(stories), tokenizer=tokenizer).eval()
    examples = [
        tokenize_record(tokenizer, CompletionRecord(**r), 64) for r in demonstrations(40, 1)
    ]
    loader = make_loader(
        examples,
        batch_size=16,
        pad_token_id=tokenizer.pad_token_id,
        packing=False,
        max_length=64,
        seed=0,
        shuffle=False,
    )
    with torch.no_grad():
        before = held_out_loss(loader, torch.device("cpu"))(base)["loss"]

    result = run_sft(config)
    after = [row for row in result.metrics if "eval_loss" in row][-1]["eval_loss"]
    assert after < before * 0.7, (before, after)

    # plain transformers reads the output and generates from it
    reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir)
    plain_tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    inputs = plain_tokenizer("Ben had a red ball. What did Ben have?", return_tensors="pt")
    output = reloaded.generate(**inputs, max_new_tokens=8, do_sample=False)
    text = plain_tokenizer.decode(
        output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert "Ben" in text or "ball" in text, text
