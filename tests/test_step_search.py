"""Step-level beam search guided by a PRM (rlhf.eval.step_search): the search against a scripted
policy and PRM, and `rlhf best-of-n --beams` on tiny real models."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from rlhf.eval.step_search import beam_search, next_step


def test_next_step_reads_up_to_the_separator():
    assert next_step(" 2 + 3 = 5\n5 - 1 = 4", "\n", ended=False) == ("2 + 3 = 5", False)
    assert next_step("The answer is 4.", "\n", ended=True) == ("The answer is 4.", True)
    assert next_step("5 - 1 = 4\n", "\n", ended=True) == ("5 - 1 = 4", True)  # nothing after
    assert next_step("5 - 1 = 4\nThe", "\n", ended=True) == ("5 - 1 = 4", False)
    assert next_step("", "\n", ended=True) == ("", True)
    assert next_step("\n \n5 - 1 = 4\n", "\n", ended=False) == ("5 - 1 = 4", False)  # blanks
    assert next_step("5 - 1 = 4 and then", "\n", ended=False) is None  # cut off mid-step


# a policy that continues each prefix with fixed steps, and a PRM that likes some of them
CONTINUATIONS = {
    "P": [("a1\nx", False), ("b1\nx", False)],
    "P" + "a1\n": [("a2", True), ("a3", True)],
    "P" + "b1\n": [("b2", True), ("b2", True)],  # the same step twice: one child
}
STEP_SCORES = {"a1": 0.9, "b1": 0.8, "a2": 0.4, "a3": 0.8, "b2": 0.99}


class ScriptedEngine:
    def __init__(self):
        self.calls = []

    def generate(self, texts, params):
        self.calls.append(list(texts))
        rows = [
            (i, *c) for i, t in enumerate(texts) for c in CONTINUATIONS[t][: params.num_samples]
        ]
        return SimpleNamespace(
            prompt_index=torch.tensor([r[0] for r in rows]),
            response_texts=[r[1] for r in rows],
            ended_with_eos=torch.tensor([r[2] for r in rows]),
        )


class ScriptedPRM:
    model = SimpleNamespace(separator="\n")

    def step_scores(self, prompts, responses):
        return [torch.tensor([STEP_SCORES[s] for s in r.split("\n")]) for r in responses]

    def aggregate(self, probabilities):
        return torch.stack([p.prod() for p in probabilities])


def test_beam_search_keeps_the_best_partial_solutions():
    engine = ScriptedEngine()
    # one beam: a1 (0.9) beats b1 (0.8) at the first step, then a3: 0.9 · 0.8 = 0.72
    (one,) = beam_search(engine, ScriptedPRM(), ["P"], beams=1, expansions=2)
    assert one.steps == ("a1", "a3") and one.score == pytest.approx(0.72) and one.done
    assert engine.calls == [["P"], ["Pa1\n"]]
    # two beams keep b1 too, whose b2 makes 0.8 · 0.99 = 0.792 > 0.72
    (two,) = beam_search(ScriptedEngine(), ScriptedPRM(), ["P"], beams=2, expansions=2)
    assert two.steps == ("b1", "b2") and two.score == pytest.approx(0.792)
    # max_steps=1: the first step is also the last
    (short,) = beam_search(ScriptedEngine(), ScriptedPRM(), ["P"], beams=2, max_steps=1)
    assert short.steps == ("a1",) and short.done
    # every continuation cut off mid-step: the beam ends where it is
    CONTINUATIONS["Q"] = [("a1 cut", False), ("b1 cut", False)]
    (stuck,) = beam_search(ScriptedEngine(), ScriptedPRM(), ["Q"], beams=2, expansions=2)
    assert stuck.steps == () and stuck.done
    with pytest.raises(ValueError, match="plain-text prompts"):
        beam_search(ScriptedEngine(), ScriptedPRM(), [({"role": "user"},)], beams=1)
    with pytest.raises(ValueError, match="at least 1"):
        beam_search(ScriptedEngine(), ScriptedPRM(), ["P"], beams=0)


def test_best_of_n_beams_adds_the_search_to_the_comparison(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from rlhf.cli import app
    from rlhf.models.load import load_tokenizer, save_model
    from rlhf.models.prm import init_process_reward_model

    tokenizer = load_tokenizer(tiny_model_dir)
    save_model(
        init_process_reward_model(tiny_model_dir, tokenizer, "\n", seed=5),
        tokenizer,
        tmp_path / "prm",
    )
    out = tmp_path / "bon"
    common = [
        "best-of-n", "-m", str(tiny_model_dir), "--prompts", "builtin:step-problems?n=3",
        "--reward", "rule=step_world", "--gold", "rule=step_world", "--max-n", "4",
        "--max-new-tokens", "10", "--out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(
        app, [*common, "--prm", str(tmp_path / "prm"), "--beams", "2", "--expansions", "2"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    searched = [row for row in rows if row["selector"] == "prm beam search (2×2)"]
    assert len(searched) == 1 and searched[0]["n"] == 4 and 0 <= searched[0]["accuracy"] <= 1
    assert "prm beam search (2×2)" in (out / "report.md").read_text()
    refused = CliRunner().invoke(app, [*common, "--beams", "2"])
    assert refused.exit_code == 1 and "--beams searches step by step" in refused.output
