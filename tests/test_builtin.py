"""Built-in datasets: builtin:arithmetic-noisy and the option parsing."""

from __future__ import annotations

import pytest

from rlhf.sim.builtin import NOISY_OFFSET, load_builtin


def test_arithmetic_noisy_shifts_a_share_of_the_results():
    clean = load_builtin("builtin:arithmetic?n=400&seed=3")
    noisy = load_builtin("builtin:arithmetic-noisy?n=400&seed=3&wrong=0.4")
    assert [r.prompt for r in noisy] == [r.prompt for r in clean]  # the same problems
    shifted = 0
    for right, given in zip(clean, noisy, strict=True):
        equation, _, value = right.completion.rpartition(" = ")
        given_equation, _, given_value = given.completion.rpartition(" = ")
        assert given_equation == equation
        assert int(given_value) - int(value) in (0, NOISY_OFFSET)
        shifted += int(given_value) != int(value)
    assert 0.3 < shifted / 400 < 0.5
    assert load_builtin("builtin:arithmetic-noisy?n=50&wrong=0") == load_builtin(
        "builtin:arithmetic?n=50"
    )
    assert len(load_builtin("builtin:arithmetic-noisy?n=7")) == 7  # wrong defaults to 0.5


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("builtin:arithmetic?wrong=0.5", r"unknown option\(s\) \['wrong'\]; use n and seed"),
        ("builtin:arithmetic-noisy?bad=1", r"use n and seed and wrong"),
        ("builtin:arithmetic-noisy?wrong=x", "bad value"),
        ("builtin:arithmetic-noisy?wrong=1.5", "wrong is a share"),
        ("builtin:arithmetic?n=x", "whole numbers"),
    ],
)
def test_builtin_options_are_checked(source, message):
    with pytest.raises(ValueError, match=message):
        load_builtin(source)
