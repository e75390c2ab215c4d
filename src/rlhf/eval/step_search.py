"""Step-level beam search guided by a process reward model (Lightman et al. 2023 rank whole
solutions; searching step by step is the PRM's other use: Snell et al. 2024, "Scaling LLM
test-time compute", §5).

Each problem keeps ``beams`` partial solutions. At every depth the policy continues each open
beam ``expansions`` times for one step: it samples from the problem plus the beam's steps (each
followed by the separator, as Monte-Carlo step labels continue a prefix), and the text up to the
next separator is the new step. The PRM scores every child's steps (:meth:`ProcessReward.
step_scores`) and aggregates them as its reward does; the ``beams`` best children of each problem
(and the beams already finished) survive. A beam finishes when its new step is the last one (the
continuation ended before another separator) or at ``max_steps``. The answer is the best
finished beam.

A search of ``beams`` × ``expansions`` samples a depth spends about as much generation as
best-of-N with N = ``beams × expansions`` full solutions (each sample is one step, not a whole
solution, but every depth samples again), which is how ``rlhf best-of-n --beam`` places it on
the accuracy-against-N plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf.eval.stats import mean_and_se
from rlhf.eval.step_selection import SelectionPoint
from rlhf.rewards.base import RewardFunction, score_reward
from rlhf.rewards.prm import ProcessReward
from rlhf.rollout.types import GenerationEngine, SamplingParams


@dataclass(frozen=True)
class Beam:
    """A partial (or finished) solution and the PRM's aggregate of its steps."""

    steps: tuple[str, ...]
    score: float
    done: bool = False

    def text(self, separator: str) -> str:
        return separator.join(self.steps)


def next_step(continuation: str, separator: str, ended: bool) -> tuple[str, bool] | None:
    """The step a continuation writes (its text up to the first separator after any leading
    blank pieces, stripped) and whether it is the last one: the continuation ended (EOS)
    without starting another step. None when the step was cut off (no separator and no EOS
    within the step's token budget): an unfinished step is not scored as a step."""
    while continuation.lstrip(" \t").startswith(separator):  # blank pieces first: skipped
        continuation = continuation.lstrip(" \t")[len(separator) :]
    step, found, rest = continuation.partition(separator)
    if not found and not ended:
        return None
    return step.strip(), ended and not (found and rest.strip())


def beam_search(
    engine: GenerationEngine,
    prm: ProcessReward,
    prompts: Sequence[str],
    *,
    beams: int = 4,
    expansions: int = 4,
    max_steps: int = 8,
    step_tokens: int = 32,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[Beam]:
    """The best finished beam of each prompt (plain-text prompts; module docstring)."""
    if beams < 1 or expansions < 1 or max_steps < 1:
        raise ValueError("beams, expansions and max_steps must each be at least 1")
    if any(not isinstance(prompt, str) for prompt in prompts):
        raise ValueError("step-level search continues plain-text prompts, not message lists")
    separator = prm.model.separator
    frontier = [[Beam((), 0.0)] for _ in prompts]
    for depth in range(max_steps):
        open_beams = [
            (p, beam) for p, kept in enumerate(frontier) for beam in kept if not beam.done
        ]
        if not open_beams:
            break
        params = SamplingParams(
            step_tokens, temperature=temperature, num_samples=expansions, seed=seed + depth,
            return_logps=False,
        )  # fmt: skip
        texts = [prompts[p] + "".join(s + separator for s in beam.steps) for p, beam in open_beams]
        batch = engine.generate(texts, params)
        children: list[tuple[int, tuple[str, ...], bool]] = []
        seen: set[tuple[int, tuple[str, ...]]] = set()
        extended: set[int] = set()  # open beams (by index) with at least one child
        for index, continuation, ended in zip(
            batch.prompt_index.tolist(), batch.response_texts, batch.ended_with_eos.tolist(),
            strict=True,
        ):  # fmt: skip
            p, beam = open_beams[index]
            read = next_step(continuation, separator, bool(ended))
            if read is None:  # cut off mid-step: dropped (the beam's other children remain)
                continue
            extended.add(index)
            step, last = read
            steps = (*beam.steps, step) if step else beam.steps
            finished = last or not step or depth == max_steps - 1
            if (p, steps) not in seen:  # the same partial solution twice adds nothing
                seen.add((p, steps))
                children.append((p, steps, finished))
        scores = []
        if children:
            scores = prm.aggregate(
                prm.step_scores(
                    [prompts[p] for p, _, _ in children],
                    [separator.join(steps) for _, steps, _ in children],
                )
            ).tolist()
        next_frontier: list[list[Beam]] = [
            [beam for beam in kept if beam.done] for kept in frontier
        ]
        for (p, steps, finished), score in zip(children, scores, strict=True):
            next_frontier[p].append(Beam(steps, score, finished))
        for index, (p, beam) in enumerate(open_beams):  # every child cut off: it ends here
            if index not in extended:
                next_frontier[p].append(Beam(beam.steps, beam.score, True))
        frontier = [sorted(kept, key=lambda beam: -beam.score)[:beams] for kept in next_frontier]
    best = []
    for kept in frontier:
        finished = [beam for beam in kept if beam.done] or kept
        best.append(max(finished, key=lambda beam: beam.score))
    return best


def beam_search_point(
    engine: GenerationEngine,
    prm: ProcessReward,
    prompts: Sequence[str],
    gold: RewardFunction,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    **search: Any,
) -> SelectionPoint:
    """The accuracy (under ``gold``, a 0/1 verifier) of the beam search's answers, as a point
    of the selection comparison at N = beams × expansions (module docstring)."""
    beams, expansions = search.get("beams", 4), search.get("expansions", 4)
    found = beam_search(engine, prm, prompts, **search)
    separator = prm.model.separator
    texts = [beam.text(separator) for beam in found]
    right = score_reward(gold, list(prompts), texts, metadata).scores.tolist()
    if any(value not in (0.0, 1.0) for value in right):
        raise ValueError("beam search accuracy needs a 0/1 verifier as gold (e.g. rule=step_world)")
    accuracy, se = mean_and_se(right)
    return SelectionPoint(
        beams * expansions, f"prm beam search ({beams}×{expansions})", accuracy, se
    )
