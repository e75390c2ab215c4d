"""Built-in datasets, named ``builtin:NAME`` wherever a data path is expected.

They are generated from a seed in code, so a fresh machine can train with nothing downloaded:

* ``builtin:arithmetic`` — demonstrations of two-digit addition and subtraction
  (``{"prompt": "What is 47 + 38?\\n", "completion": "47 + 38 = 85"}``), a small verifiable
  task that a tiny model learns in minutes on a CPU.
* ``builtin:arithmetic-text`` — the same as plain text, for pretraining.

An optional ``?n=2000&seed=1`` suffix sets the number of rows and the seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from urllib.parse import parse_qsl

from rlhf.data.records import CompletionRecord, Record, TextRecord

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


def arithmetic_text(n: int, seed: int) -> list[Record]:
    rng = random.Random(seed)
    return [TextRecord("".join(arithmetic_problem(rng))) for _ in range(n)]


BUILTIN: dict[str, Callable[[int, int], list[Record]]] = {
    "arithmetic": arithmetic,
    "arithmetic-text": arithmetic_text,
}


def is_builtin(source: str) -> bool:
    return str(source).startswith(PREFIX)


def load_builtin(source: str) -> list[Record]:
    """Generate the records named by ``builtin:NAME[?n=N&seed=S]``."""
    name, _, query = str(source).removeprefix(PREFIX).partition("?")
    if name not in BUILTIN:
        raise ValueError(
            f"{source}: unknown built-in dataset (known: {', '.join(sorted(BUILTIN))})"
        )
    options = dict(parse_qsl(query))
    unknown = set(options) - {"n", "seed"}
    if unknown:
        raise ValueError(f"{source}: unknown option(s) {sorted(unknown)}; use n and seed")
    try:
        n, seed = int(options.get("n", 2000)), int(options.get("seed", 0))
    except ValueError:
        raise ValueError(f"{source}: n and seed must be whole numbers") from None
    return BUILTIN[name](n, seed)
