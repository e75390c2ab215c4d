"""Built-in datasets, named ``builtin:NAME`` wherever a data path is expected.

They are generated from a seed in code, so a fresh machine can train with nothing downloaded:

* ``builtin:arithmetic`` — demonstrations of two-digit addition and subtraction
  (``{"prompt": "What is 47 + 38?\\n", "completion": "47 + 38 = 85"}``), a small verifiable
  task that a tiny model learns in minutes on a CPU.
* ``builtin:arithmetic-noisy`` — the same demonstrations, but a share of them (``wrong``,
  default 0.5) carry a systematic mistake: a result 10 too high (``47 + 38 = 95``). A model
  fine-tuned on enough of them learns to add *and* the error, about as often as the data
  makes it, so sampling often finds the right answer where greedy decoding may not: the
  starting point of the held-out RL demonstration (benchmarks/grpo_arithmetic.py).
* ``builtin:arithmetic-text`` — the same as plain text, for pretraining.
* ``builtin:arithmetic-preferences`` — reward-model pairs: the correct answer is chosen, a
  wrong one (a near miss, or any number) rejected.
* ``builtin:arithmetic-rankings`` — four answers per problem ranked by their distance from the
  right answer (equal distances tie).
* ``builtin:arithmetic-ratings`` — three rated answers per problem, scored 1–5 by distance.
* ``builtin:arithmetic-binary`` — unpaired thumbs up/down (KTO): one answer per problem, the
  correct one (thumbs up) or a wrong one (thumbs down), half each.

For the last four, ``n`` counts problems (prompts).

The embedded world's language (:mod:`rlhf.sim.world`, gold reward :mod:`rlhf.sim.gold`,
annotators :mod:`rlhf.sim.annotators`; docs/world.md):

* ``builtin:world-text`` — pretraining texts, a prompt and a response of the broad mix
  (``{"text": "Tell me about the cat.\\nThe cat is very soft. Thank you for asking."}``).
* ``builtin:world-sft`` — demonstrations of the behaviour distribution, mixed in quality
  (``{"prompt": "Describe the river.\\n", "completion": "Every day the fish swims."}``).
* ``builtin:world-prompts`` — prompts alone (``{"prompt": "Describe the river.\\n"}``), for
  online RL; thousands of distinct ones (some rows repeat). ``split=train`` or ``split=eval``
  keeps one side of a fixed held-out split (one prompt in five is "eval"), so evaluation
  prompts are never trained on.
* ``builtin:world-preferences`` — one pair of behaviour responses per prompt, labelled by the
  default simulated annotator pool (:func:`rlhf.sim.annotators.default_pool`).
  ``nontransitive=0.3`` gives the annotators the world's cyclic taste of that strength in gold
  units (:mod:`rlhf.sim.preference`: scene beats portrait beats story beats scene), which no
  reward model can fit and a pairwise preference model can (docs/preference-model.md).
* ``builtin:world-rankings`` — four behaviour responses per prompt ranked by the pool
  (duplicates dropped).
* ``builtin:world-ratings`` — three behaviour responses per prompt rated 1–5 by the pool.
* ``builtin:world-binary`` — one behaviour response per prompt with the pool's thumbs up/down.

For the last four, too, ``n`` counts prompts.

The embedded step world (:mod:`rlhf.sim.steps`): chains of additions and subtractions solved
one step per line, every step checked by a gold checker (process reward models, search):

* ``builtin:step-problems`` — prompts alone (``{"prompt": "Compute 7 + 5 - 3 + 8.\\n"}``), for
  online RL and search. A prompt holds its whole problem: :func:`rlhf.sim.steps.parse_problem`
  reads it back, so a verifier needs no answer column. ``split=train`` or ``split=eval`` keeps
  one side of a fixed held-out split (one problem in five, as for ``world-prompts``).
* ``builtin:step-sft`` — demonstrations whose completion is the canonical solution, its steps
  joined by newlines (``"7 + 5 = 12\\n12 - 3 = 9\\n9 + 8 = 17\\nThe answer is 17."``).
* ``builtin:step-solutions`` — step-labelled solutions for PRM training: each step of a noisy
  solution slips with probability ``error_rate`` (default 0.3), and the gold checker labels
  every step +1 or −1 (``{"prompt": ..., "steps": ["7 + 5 = 12", ...], "labels": [1, -1, ...],
  "answer": "17"}``; ``answer`` is the problem's, not the solution's).

* ``builtin:step-outcomes`` — outcome labels for an outcome reward model: ``k`` noisy solutions
  (default 4) of each problem as thumbs, up when the final answer is right
  (``{"prompt": ..., "completion": "7 + 5 = 12\\n...", "label": true}``; ``rlhf rm`` pairs them
  within a prompt).

All four take ``split``, ``min_ops`` and ``max_ops`` (operations per problem, default 2 to
4) and ``max_operand`` (operands from 1 to it, default 20; a smaller one makes a world the
tiniest models can learn in a minute); with the same seed and options they hold the same
problems in the same order.

An optional ``?n=2000&seed=1`` suffix sets the number of rows and the seed
(``arithmetic-noisy`` also takes ``wrong=0.4``, ``step-solutions`` ``error_rate=0.3``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from rlhf.data.records import (
    BinaryRecord,
    CompletionRecord,
    PreferenceRecord,
    PromptRecord,
    RankingRecord,
    RatingRecord,
    Record,
    StepRecord,
    TextRecord,
)

if TYPE_CHECKING:
    from rlhf.sim.annotators import LabelKind

PREFIX = "builtin:"


def arithmetic_problem(rng: random.Random) -> tuple[str, str]:
    left, right = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return f"What is {left} + {right}?\n", f"{left} + {right} = {left + right}"
    left, right = max(left, right), min(left, right)
    return f"What is {left} - {right}?\n", f"{left} - {right} = {left - right}"


def arithmetic(n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    return [CompletionRecord(*arithmetic_problem(rng)) for _ in range(n)]


NOISY_OFFSET = 10  # arithmetic-noisy's systematic mistake: the result this much too high


def arithmetic_noisy(n: int, seed: int, wrong: float = 0.5) -> list[Record]:
    """``arithmetic`` demonstrations, a random ``wrong`` share of them with a result
    ``NOISY_OFFSET`` too high (the same problems as ``arithmetic`` with this seed)."""
    rng, noise = random.Random(seed), random.Random(f"noisy-{seed}")
    records: list[Record] = []
    for _ in range(n):
        prompt, completion = arithmetic_problem(rng)
        if noise.random() < wrong:
            equation, _, value = completion.rpartition(" = ")
            completion = f"{equation} = {int(value) + NOISY_OFFSET}"
        records.append(CompletionRecord(prompt, completion))
    return records


def arithmetic_text(n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    return [TextRecord("".join(arithmetic_problem(rng))) for _ in range(n)]


def arithmetic_answers(rng: random.Random, wrong: int) -> tuple[str, list[tuple[str, int]]]:
    """A problem's prompt and its correct answer plus ``wrong`` distinct wrong ones, each
    with its distance from the right result (0 for the correct one). Half the wrong answers
    are near misses (off by 1 to 9), the others any number from 0 to 198."""
    prompt, completion = arithmetic_problem(rng)
    equation, _, value = completion.rpartition(" = ")
    right = int(value)
    results = {right}
    while len(results) < wrong + 1:
        if rng.random() < 0.5:
            results.add(max(0, right + rng.choice((-1, 1)) * rng.randint(1, 9)))
        else:
            results.add(rng.randint(0, 198))
    answers = [(f"{equation} = {right}", 0)]
    answers += [(f"{equation} = {result}", abs(result - right)) for result in results - {right}]
    return prompt, answers


def arithmetic_preferences(n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    records: list[Record] = []
    for _ in range(n):
        prompt, [(correct, _), (wrong, _)] = arithmetic_answers(rng, 1)
        records.append(PreferenceRecord(prompt, correct, wrong))
    return records


def arithmetic_rankings(n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    records: list[Record] = []
    for _ in range(n):
        prompt, answers = arithmetic_answers(rng, 3)
        rng.shuffle(answers)
        distances = sorted({distance for _, distance in answers})
        ranks = tuple(distances.index(distance) for _, distance in answers)  # 0 = best, ties
        records.append(RankingRecord(prompt, tuple(a for a, _ in answers), ranks))
    return records


_RATING_STEPS = ((0, 5.0), (2, 4.0), (9, 3.0), (30, 2.0))  # (largest distance, score); else 1


def arithmetic_ratings(n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    records: list[Record] = []
    for _ in range(n):
        prompt, answers = arithmetic_answers(rng, 2)
        for answer, distance in answers:
            score = next((score for most, score in _RATING_STEPS if distance <= most), 1.0)
            records.append(RatingRecord(prompt, answer, score, (1.0, 5.0)))
    return records


def arithmetic_binary(n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    records: list[Record] = []
    for _ in range(n):
        prompt, [(correct, _), (wrong, _)] = arithmetic_answers(rng, 1)
        liked = rng.random() < 0.5
        records.append(BinaryRecord(prompt, correct if liked else wrong, liked))
    return records


def world_text(n: int, seed: int) -> list[Record]:
    from rlhf.sim.world import corpus_text

    return [TextRecord(text) for text in corpus_text(n, seed)]


def world_sft(n: int, seed: int) -> list[Record]:
    from rlhf.sim.world import demonstrations

    return [CompletionRecord(prompt, response) for prompt, response in demonstrations(n, seed)]


def world_prompts(n: int, seed: int, split: str = "all") -> list[Record]:
    from rlhf.sim.world import prompts

    return [PromptRecord(prompt) for prompt in prompts(n, seed, split)]


def _world_labels(
    n: int, seed: int, k: int, kind: LabelKind, nontransitive: float = 0.0
) -> list[Record]:
    """``k`` behaviour responses to each of ``n`` prompts, labelled by the default pool (with
    the cyclic taste ``nontransitive`` in its comparisons); for pairs, each group is drawn
    again until its two responses differ."""
    from rlhf.sim.annotators import default_pool, label_groups
    from rlhf.sim.world import prompts, sample_response

    rng = random.Random(f"world-{kind}-{seed}")
    prompt_list = prompts(n, seed)
    groups = []
    for prompt in prompt_list:
        group = [sample_response(prompt, rng) for _ in range(k)]
        while kind in ("pairs", "rankings") and len(set(group)) < 2:
            group = [sample_response(prompt, rng) for _ in range(k)]
        groups.append(group)
    pool = default_pool(seed, nontransitive=nontransitive)
    return label_groups(prompt_list, groups, kind, annotators=pool, seed=seed)


def world_preferences(n: int, seed: int, nontransitive: float = 0.0) -> list[Record]:
    return _world_labels(n, seed, 2, "pairs", nontransitive)


def world_rankings(n: int, seed: int) -> list[Record]:
    return _world_labels(n, seed, 4, "rankings")


def world_ratings(n: int, seed: int) -> list[Record]:
    return _world_labels(n, seed, 3, "ratings")


def world_binary(n: int, seed: int) -> list[Record]:
    return _world_labels(n, seed, 1, "binary")


def step_problems(
    n: int, seed: int, split: str = "all", min_ops: int = 2, max_ops: int = 4, max_operand: int = 20
) -> list[Record]:
    from rlhf.sim.steps import step_problems as problems

    chosen = problems(n, seed, min_ops, max_ops, split, max_operand)
    return [PromptRecord(problem.prompt) for problem in chosen]


def step_sft(
    n: int, seed: int, split: str = "all", min_ops: int = 2, max_ops: int = 4, max_operand: int = 20
) -> list[Record]:
    from rlhf.sim.steps import solve
    from rlhf.sim.steps import step_problems as problems

    return [
        CompletionRecord(problem.prompt, "\n".join(solve(problem)))
        for problem in problems(n, seed, min_ops, max_ops, split, max_operand)
    ]


def step_solutions(
    n: int,
    seed: int,
    error_rate: float = 0.3,
    split: str = "all",
    min_ops: int = 2,
    max_ops: int = 4,
    max_operand: int = 20,
) -> list[Record]:
    from rlhf.sim.steps import check_steps, noisy_solutions

    return [
        StepRecord(
            problem.prompt, tuple(steps), tuple(check_steps(problem, steps)), str(problem.answer)
        )
        for problem, steps in noisy_solutions(
            n, seed, error_rate, min_ops, max_ops, split, max_operand
        )
    ]


def step_outcomes(
    n: int,
    seed: int,
    k: int = 4,
    error_rate: float = 0.3,
    split: str = "all",
    min_ops: int = 2,
    max_ops: int = 4,
    max_operand: int = 20,
) -> list[Record]:
    from rlhf.sim.steps import is_correct, noisy_solution
    from rlhf.sim.steps import step_problems as problems

    if k < 1:
        raise ValueError(f"k {k}: at least one solution per problem")
    rng = random.Random(f"step-outcomes-{seed}")
    records: list[Record] = []
    for problem in problems(n, seed, min_ops, max_ops, split, max_operand):
        for _ in range(k):
            steps = noisy_solution(problem, error_rate, rng)
            records.append(
                BinaryRecord(problem.prompt, "\n".join(steps), is_correct(problem, steps))
            )
    return records


BUILTIN: dict[str, Callable[..., list[Record]]] = {
    "arithmetic": arithmetic,
    "arithmetic-noisy": arithmetic_noisy,
    "arithmetic-text": arithmetic_text,
    "arithmetic-preferences": arithmetic_preferences,
    "arithmetic-rankings": arithmetic_rankings,
    "arithmetic-ratings": arithmetic_ratings,
    "arithmetic-binary": arithmetic_binary,
    "world-text": world_text,
    "world-sft": world_sft,
    "world-prompts": world_prompts,
    "world-preferences": world_preferences,
    "world-rankings": world_rankings,
    "world-ratings": world_ratings,
    "world-binary": world_binary,
    "step-problems": step_problems,
    "step-sft": step_sft,
    "step-solutions": step_solutions,
    "step-outcomes": step_outcomes,
}
# options beyond n and seed, with their types: name -> {option: type}
EXTRA_OPTIONS: dict[str, dict[str, type]] = {
    "arithmetic-noisy": {"wrong": float},
    "world-prompts": {"split": str},
    "world-preferences": {"nontransitive": float},
    "step-problems": {"split": str, "min_ops": int, "max_ops": int, "max_operand": int},
    "step-sft": {"split": str, "min_ops": int, "max_ops": int, "max_operand": int},
    "step-outcomes": {
        "k": int,
        "error_rate": float,
        "split": str,
        "min_ops": int,
        "max_ops": int,
        "max_operand": int,
    },
    "step-solutions": {
        "error_rate": float,
        "split": str,
        "min_ops": int,
        "max_ops": int,
        "max_operand": int,
    },
}


def is_builtin(source: str) -> bool:
    return str(source).startswith(PREFIX)


def load_builtin(source: str) -> list[Record]:
    """Generate the records named by ``builtin:NAME[?n=N&seed=S]`` (plus the name's extra
    options, e.g. ``builtin:arithmetic-noisy?wrong=0.4``)."""
    name, _, query = str(source).removeprefix(PREFIX).partition("?")
    if name not in BUILTIN:
        raise ValueError(
            f"{source}: unknown built-in dataset (known: {', '.join(sorted(BUILTIN))})"
        )
    options = dict(parse_qsl(query))
    extra = EXTRA_OPTIONS.get(name, {})
    unknown = set(options) - {"n", "seed", *extra}
    if unknown:
        known = " and ".join(["n", "seed", *extra])
        raise ValueError(f"{source}: unknown option(s) {sorted(unknown)}; use {known}")
    try:
        n, seed = int(options.pop("n", 2000)), int(options.pop("seed", 0))
    except ValueError:
        raise ValueError(f"{source}: n and seed must be whole numbers") from None
    try:
        kwargs = {key: extra[key](value) for key, value in options.items()}
    except ValueError:
        raise ValueError(f"{source}: bad value among {sorted(options)}") from None
    for share in ("wrong", "error_rate"):
        if not 0 <= kwargs.get(share, 0.0) <= 1:
            raise ValueError(f"{source}: {share} is a share, from 0 to 1")
    try:
        return BUILTIN[name](n, seed, **kwargs)
    except ValueError as error:  # e.g. a bad split or min_ops
        raise ValueError(f"{source}: {error}") from None
