"""Krippendorff's alpha against the worked examples of Krippendorff (2011), "Computing
Krippendorff's Alpha-Reliability", and against an independent pairwise brute force."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf.feedback.agreement import krippendorff_alpha

# K 2011, sec. C: 4 observers (rows) × 12 units (columns), None = missing.
_CODERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
MISSING_EXAMPLE = [list(unit) for unit in zip(*_CODERS, strict=True)]

# K 2011, sec. A: 2 observers, 10 units, binary data.
BINARY_EXAMPLE = [
    list(unit)
    for unit in zip([0, 1, 0, 0, 0, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0, 0, 0], strict=True)
]


def brute_force_alpha(units, level):
    """α from the pairwise definition, without a coincidence matrix:
    α = 1 − (n − 1) Σ_u Σ_{i≠j∈u} δ²(v_i, v_j)/(m_u − 1) / Σ_{i≠j over all pairable values} δ²."""
    pairable = [[v for v in u if v is not None] for u in units]
    pairable = [u for u in pairable if len(u) >= 2]
    values = [v for u in pairable for v in u]
    n = len(values)
    distinct = sorted(set(values))
    freq = {c: values.count(c) for c in distinct}

    def delta2(c, k):
        if level == "nominal":
            return float(c != k)
        if level == "interval":
            return (c - k) ** 2
        if level == "ratio":
            return 0.0 if c == k else ((c - k) / (c + k)) ** 2
        lo, hi = min(c, k), max(c, k)
        return (sum(freq[g] for g in distinct if lo <= g <= hi) - (freq[c] + freq[k]) / 2) ** 2

    within = sum(
        sum(delta2(a, b) for a, b in itertools.permutations(u, 2)) / (len(u) - 1) for u in pairable
    )
    total = sum(delta2(a, b) for a, b in itertools.permutations(values, 2))
    return 1 - (n - 1) * within / total


@pytest.mark.parametrize(
    ("level", "expected"),
    [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)],
)
def test_krippendorff_2011_missing_data_example(level, expected):
    alpha = krippendorff_alpha(MISSING_EXAMPLE, level)
    assert alpha is not None
    assert round(alpha, 3) == expected
    assert alpha == pytest.approx(brute_force_alpha(MISSING_EXAMPLE, level), abs=1e-12)


def test_krippendorff_2011_binary_example():
    alpha = krippendorff_alpha(BINARY_EXAMPLE)
    assert alpha is not None
    assert round(alpha, 3) == 0.095
    # Exact value from the paper's coincidence matrix: 1 − 19 · 4 / (14 · 6) = 2/21.
    assert alpha == pytest.approx(2 / 21, abs=1e-12)
    # Binary data: interval and nominal δ² coincide.
    assert krippendorff_alpha(BINARY_EXAMPLE, "interval") == pytest.approx(alpha)


def test_unpairable_units_are_dropped():
    with_extra = [*MISSING_EXAMPLE, [None, 7, None], [], [None, None]]
    for level in ("nominal", "ordinal", "interval", "ratio"):
        assert krippendorff_alpha(with_extra, level) == pytest.approx(
            krippendorff_alpha(MISSING_EXAMPLE, level)
        )


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval", "ratio"])
def test_perfect_agreement_is_one(level):
    units = [[1, 1, 1], [2, 2, None], [5, 5, 5], [3, None, 3]]
    assert krippendorff_alpha(units, level) == pytest.approx(1.0)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval", "ratio"])
def test_undefined_alpha_is_none(level):
    assert krippendorff_alpha([[2, 2], [2, 2, None], [2, 2, 2]], level) is None  # D_e = 0
    assert krippendorff_alpha([[1, None], [None, 3], [4]], level) is None  # nothing pairable
    assert krippendorff_alpha([], level) is None


def test_nominal_string_categories():
    labels = {0: "no", 1: "yes"}
    as_strings = [[labels[v] for v in unit] for unit in BINARY_EXAMPLE]
    assert krippendorff_alpha(as_strings) == pytest.approx(krippendorff_alpha(BINARY_EXAMPLE))
    units = [["a", "b", None], ["chosen", "chosen", "chosen"], ["tie", "a", "a"]]
    assert krippendorff_alpha(units) == pytest.approx(brute_force_alpha(units, "nominal"))


def test_systematic_disagreement_is_negative():
    alpha = krippendorff_alpha([[0, 1], [1, 0], [0, 1], [1, 0]])
    assert alpha is not None and alpha < 0


def test_nan_is_missing():
    with_nan = [[float("nan") if v is None else v for v in u] for u in MISSING_EXAMPLE]
    assert krippendorff_alpha(with_nan, "interval") == pytest.approx(
        krippendorff_alpha(MISSING_EXAMPLE, "interval")
    )


def test_unknown_level_raises():
    with pytest.raises(ValueError, match="unknown level 'cardinal'"):
        krippendorff_alpha(MISSING_EXAMPLE, "cardinal")  # type: ignore[arg-type]


@pytest.mark.parametrize("level", ["ordinal", "interval", "ratio"])
@pytest.mark.parametrize("bad", ["a", True])
def test_non_numeric_values_raise(level, bad):
    with pytest.raises(ValueError, match="needs numeric values"):
        krippendorff_alpha([[1, 2], [bad, 1]], level)


def test_negative_ratio_values_raise():
    with pytest.raises(ValueError, match="non-negative"):
        krippendorff_alpha([[1, 2], [-1, 1]], "ratio")


def test_unhashable_nominal_values_raise():
    with pytest.raises(ValueError, match="hashable"):
        krippendorff_alpha([[1, 2], [[1], 1]])  # type: ignore[list-item]


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval", "ratio"])
def test_shuffling_coders_and_units_does_not_change_alpha(level):
    rng = random.Random(0)
    reference = krippendorff_alpha(MISSING_EXAMPLE, level)
    for _ in range(5):
        shuffled = [rng.sample(unit, len(unit)) for unit in MISSING_EXAMPLE]
        rng.shuffle(shuffled)
        assert krippendorff_alpha(shuffled, level) == pytest.approx(reference, abs=1e-12)


_unit = st.lists(st.one_of(st.none(), st.integers(0, 5)), min_size=0, max_size=5)


@settings(max_examples=60, deadline=None)
@given(
    units=st.lists(_unit, min_size=1, max_size=8),
    level=st.sampled_from(["nominal", "ordinal", "interval", "ratio"]),
)
def test_matches_brute_force(units, level):
    alpha = krippendorff_alpha(units, level)
    pairable = [u for u in ([v for v in u if v is not None] for u in units) if len(u) >= 2]
    if len({v for u in pairable for v in u}) < 2:
        assert alpha is None
        return
    assert alpha == pytest.approx(brute_force_alpha(units, level), abs=1e-9)
    shuffled = [list(reversed(u)) for u in reversed(units)]
    assert krippendorff_alpha(shuffled, level) == pytest.approx(alpha, abs=1e-9)
