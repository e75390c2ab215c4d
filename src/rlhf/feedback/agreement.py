"""Inter-annotator agreement: Krippendorff's alpha.

Krippendorff's alpha measures how far the annotators (coders) of a set of units (items) agree
beyond what chance would give, for any number of coders, with missing values, and for nominal,
ordinal, interval and ratio data:

    α = 1 − D_o / D_e

where D_o is the observed and D_e the expected (chance) disagreement. α = 1 is perfect
agreement, α = 0 agreement at chance level, α < 0 systematic disagreement.

The computation follows K. Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability",
Annenberg School for Communication, University of Pennsylvania, section C ("Any number of
observers, missing data", the coincidence-matrix method) and section E (the difference
functions δ²). Pure Python, no dependencies; inputs are small.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from numbers import Real
from typing import Literal

Value = float | int | str | bool | None
Level = Literal["nominal", "ordinal", "interval", "ratio"]

LEVELS: tuple[str, ...] = ("nominal", "ordinal", "interval", "ratio")


def krippendorff_alpha(units: Sequence[Sequence[Value]], level: Level = "nominal") -> float | None:
    """Krippendorff's alpha reliability coefficient of a reliability data set.

    Args:
        units: one entry per unit (item, e.g. one comparison); each entry lists the values the
            coders (annotators) gave that unit, in any order and of any length. ``None`` (or a
            float NaN) is a missing value and is ignored. Units with fewer than two values are
            not pairable and are dropped, as Krippendorff (2011) prescribes.
        level: the metric of the values, which picks the difference function δ²:
            ``"nominal"`` (any hashable values; δ² = 0 if equal else 1; note that Python's
            equality makes ``1``, ``1.0`` and ``True`` the same category), ``"ordinal"``
            (numbers; the marginal-frequency rank metric), ``"interval"`` (numbers;
            δ² = (c − k)²) or ``"ratio"`` (non-negative numbers; δ² = ((c − k)/(c + k))²).
            Booleans are not numbers here: use ``"nominal"`` for binary labels.

    Returns:
        α as a float, or ``None`` where α is undefined: no unit has two or more values, or the
        expected disagreement D_e is 0 (every pairable value is the same, so there is no
        variation to agree on). Callers should show ``None`` as "n/a".

    Raises:
        ValueError: unknown ``level``; a non-numeric (or boolean) value with ``"ordinal"``,
            ``"interval"`` or ``"ratio"``; a negative value with ``"ratio"``; an unhashable
            value with ``"nominal"``.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {', '.join(LEVELS)}")

    # Pairable units only: m_u ≥ 2 values after dropping the missing ones (K 2011, sec. C).
    pairable: list[list[Hashable]] = []
    for index, unit in enumerate(units):
        values = [_check_value(v, level, index) for v in unit if not _is_missing(v)]
        if len(values) >= 2:
            pairable.append(values)
    if not pairable:
        return None

    # Coincidence matrix: o_ck = Σ_u (number of c-k pairs in unit u) / (m_u − 1), where a
    # unit holding n_uc values c has n_uc·n_uk ordered c-k pairs (c ≠ k) and n_uc·(n_uc − 1)
    # c-c pairs (K 2011, sec. C, step "coincidences within units").
    coincidences: Counter[tuple[Hashable, Hashable]] = Counter()
    for values in pairable:
        counts = Counter(values)
        m_u = len(values)
        for c, n_uc in counts.items():
            for k, n_uk in counts.items():
                pairs = n_uc * (n_uk - 1) if c == k else n_uc * n_uk
                if pairs:
                    coincidences[(c, k)] += pairs / (m_u - 1)

    # Marginals n_c = Σ_k o_ck and n = Σ_c n_c, the number of pairable values.
    marginals: Counter[Hashable] = Counter()
    for (c, _k), o_ck in coincidences.items():
        marginals[c] += o_ck
    n = sum(marginals.values())

    delta2 = _difference_function(level, marginals)

    # α = 1 − D_o / D_e with D_o = (1/n) Σ_ck o_ck δ²_ck and
    # D_e = (1/(n(n − 1))) Σ_ck n_c n_k δ²_ck (K 2011, sec. C, final step).
    observed = sum(o_ck * delta2(c, k) for (c, k), o_ck in coincidences.items()) / n
    expected = sum(
        n_c * n_k * delta2(c, k) for c, n_c in marginals.items() for k, n_k in marginals.items()
    ) / (n * (n - 1))
    if expected == 0:
        return None
    return 1.0 - observed / expected


# --------------------------------------------------------------------------------------------
# helpers


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_value(value: Value, level: str, index: int) -> Hashable:
    if level == "nominal":
        try:
            hash(value)
        except TypeError:
            raise ValueError(
                f"unit {index}: nominal values must be hashable, got {type(value).__name__}"
            ) from None
        return value
    if not _is_number(value):
        raise ValueError(
            f"unit {index}: level {level!r} needs numeric values, got {value!r} "
            f"({type(value).__name__}); use level='nominal' for categories or booleans"
        )
    if level == "ratio" and value < 0:  # type: ignore[operator]
        raise ValueError(f"unit {index}: level 'ratio' needs non-negative values, got {value!r}")
    return value


def _difference_function(
    level: str, marginals: Counter[Hashable]
) -> Callable[[Hashable, Hashable], float]:
    """δ²_ck for ``level``; the ordinal metric depends on the marginals n_c (K 2011, sec. E)."""
    if level == "nominal":
        return lambda c, k: 0.0 if c == k else 1.0
    if level == "interval":
        return lambda c, k: float((c - k) ** 2)  # type: ignore[operator]
    if level == "ratio":
        # ((c − k)/(c + k))², 0 when c = k = 0.
        return lambda c, k: 0.0 if c == k else float(((c - k) / (c + k)) ** 2)  # type: ignore[operator]

    # Ordinal: δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k)/2)², g running over the values in rank
    # order between c and k inclusive.
    ranked = sorted(marginals)  # type: ignore[type-var]
    position = {v: i for i, v in enumerate(ranked)}
    cumulative = [0.0]
    for v in ranked:
        cumulative.append(cumulative[-1] + marginals[v])

    def ordinal(c: Hashable, k: Hashable) -> float:
        if c == k:
            return 0.0
        lo, hi = sorted((position[c], position[k]))
        between = cumulative[hi + 1] - cumulative[lo]
        return (between - (marginals[c] + marginals[k]) / 2) ** 2

    return ordinal
