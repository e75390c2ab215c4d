"""rlhf.eval.ratings: win rates, the Bradley–Terry fit and Elo, against hand-derived numbers
and independent (pure Python) maximisations."""

from __future__ import annotations

import math
import random

import pytest

from rlhf.eval import Comparison, WinRate, bradley_terry, elo_sequential, win_rates
from rlhf.eval.ratings import ELO_PER_LOGIT

THREE_OF_FOUR = [("a", "b", 1.0), ("a", "b", 1.0), ("a", "b", 1.0), ("a", "b", 0.0)]


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def log_posterior(theta: dict[str, float], comparisons, precision: float) -> float:
    """Eq. (2) written from its definition, comparison by comparison."""
    total = 0.0
    for a, b, outcome, *weight in comparisons:
        w = weight[0] if weight else 1.0
        d = theta[a] - theta[b]
        total += w * (outcome * log_sigmoid(d) + (1 - outcome) * log_sigmoid(-d))
    return total - precision / 2 * sum(t * t for t in theta.values())


def partial(theta: dict[str, float], model: str, comparisons, precision: float) -> float:
    """∂/∂θ_model of :func:`log_posterior`, also from the definition."""
    total = -precision * theta[model]
    for a, b, outcome, *weight in comparisons:
        w = weight[0] if weight else 1.0
        if model in (a, b):
            p = 1 / (1 + math.exp(-(theta[a] - theta[b])))
            total += w * (outcome - p) * (1 if model == a else -1)
    return total


def coordinate_ascent(models, comparisons, precision: float) -> dict[str, float]:
    """Brute force: maximise one θ at a time, by bisection on the sign of its partial
    derivative (decreasing: the objective is concave), sweeping until nothing moves."""
    theta = dict.fromkeys(models, 0.0)
    for _ in range(5000):
        moved = 0.0
        for model in models:
            lo, hi = -30.0, 30.0
            for _ in range(200):
                mid = (lo + hi) / 2
                if partial({**theta, model: mid}, model, comparisons, precision) > 0:
                    lo = mid
                else:
                    hi = mid
            moved = max(moved, abs(lo - theta[model]))
            theta[model] = lo
        if moved < 1e-13:
            return theta
    raise AssertionError("coordinate ascent did not converge")


def minorise_maximise(models, comparisons) -> dict[str, float]:
    """Hunter (2004)'s MM iteration for the plain MLE, γ_i ← W_i / Σ_j n_ij / (γ_i + γ_j)
    (W_i: i's score, ties ½), as centred log-strengths."""
    gamma = dict.fromkeys(models, 1.0)
    for _ in range(100_000):
        new = {}
        for i in models:
            score = sum(o for a, _, o in comparisons if a == i)
            score += sum(1 - o for _, b, o in comparisons if b == i)
            denominator = sum(1 / (gamma[a] + gamma[b]) for a, b, _ in comparisons if i in (a, b))
            new[i] = score / denominator
        norm = math.prod(new.values()) ** (1 / len(models))
        new = {m: g / norm for m, g in new.items()}
        if max(abs(math.log(new[m] / gamma[m])) for m in models) < 1e-14:
            break
        gamma = new
    return {m: math.log(g) for m, g in new.items()}


# ---------------------------------------------------------------- Bradley–Terry, hand numbers


def test_two_models_mle_is_the_log_odds():
    # a beat b 3 times of 4: the MLE of σ(θ_a − θ_b) is 3/4, so θ_a − θ_b = ln 3
    centred = bradley_terry(THREE_OF_FOUR, prior_sd=None)
    assert centred["a"].theta == pytest.approx(math.log(3) / 2, abs=1e-12)
    assert centred["b"].theta == pytest.approx(-math.log(3) / 2, abs=1e-12)
    assert centred.probability("a", "b") == pytest.approx(0.75, abs=1e-12)
    assert centred.log_likelihood == pytest.approx(3 * math.log(0.75) + math.log(0.25))
    assert (centred["a"].games, centred["a"].score, centred["b"].score) == (4.0, 3.0, 1.0)
    assert centred.iterations < 10
    anchored = bradley_terry(THREE_OF_FOUR, prior_sd=None, anchor="b")
    assert anchored["a"].theta == pytest.approx(math.log(3), abs=1e-12)
    assert anchored["b"].theta == 0.0


def test_two_models_standard_errors_from_the_fisher_information():
    # I(θ_a − θ_b) = Σ over the 4 games of p (1 − p) = 4 · ¾ · ¼ = ¾, so se = sqrt(4/3);
    # centred, θ_a = (θ_a − θ_b)/2 has variance (4/3)/4 = 1/3
    centred = bradley_terry(THREE_OF_FOUR, prior_sd=None)
    assert centred["a"].se == pytest.approx(math.sqrt(1 / 3), rel=1e-9)
    assert centred["b"].se == pytest.approx(math.sqrt(1 / 3), rel=1e-9)
    difference, se = centred.difference("a", "b")
    assert difference == pytest.approx(math.log(3))
    assert se == pytest.approx(math.sqrt(4 / 3), rel=1e-9)
    assert centred.covariance[0][1] == pytest.approx(-1 / 3, rel=1e-9)
    anchored = bradley_terry(THREE_OF_FOUR, prior_sd=None, anchor="b")
    assert anchored["a"].se == pytest.approx(math.sqrt(4 / 3), rel=1e-9)
    assert anchored["b"].se == 0.0


def test_two_models_with_a_prior_match_the_hand_solution():
    # 4–0 under N(0, σ²) priors, centred: θ_a = −θ_b = t solves 4 σ(−2t) = λ t (eq. 3), and
    # the penalised information [[w + λ, −w], [−w, w + λ]], w = 4 p (1 − p), p = σ(2t), has
    # eigenvalue 2w + λ on (1, −1): var(θ_a − θ_b) = 2 / (2w + λ), var(θ_a) = 1 / (2(2w + λ))
    prior_sd = 1.5
    precision = 1 / prior_sd**2
    lo, hi = 0.0, 10.0
    for _ in range(200):
        t = (lo + hi) / 2
        if 4 / (1 + math.exp(2 * t)) > precision * t:
            lo = t
        else:
            hi = t
    p = 1 / (1 + math.exp(-2 * t))
    w = 4 * p * (1 - p)
    ratings = bradley_terry([("a", "b", 1.0)] * 4, prior_sd=prior_sd)
    assert ratings["a"].theta == pytest.approx(t, abs=1e-10)
    assert ratings["b"].theta == pytest.approx(-t, abs=1e-10)
    assert ratings["a"].se == pytest.approx(math.sqrt(1 / (2 * (2 * w + precision))), rel=1e-9)
    assert ratings.difference("a", "b")[1] == pytest.approx(
        math.sqrt(2 / (2 * w + precision)), rel=1e-9
    )
    assert ratings.prior_sd == prior_sd


def test_three_models_in_a_chain_decouple():
    # a–b and b–c only (a tree): each edge is fitted on its own, θ_a − θ_b = ln(3/1),
    # θ_b − θ_c = ln(2/1), so θ_a − θ_c = ln 6
    comparisons = [*THREE_OF_FOUR, ("b", "c", 1.0), ("c", "b", 0.0), ("b", "c", 0.0)]
    ratings = bradley_terry(comparisons, prior_sd=None, anchor="c")
    assert ratings["b"].theta == pytest.approx(math.log(2), abs=1e-10)
    assert ratings["a"].theta == pytest.approx(math.log(6), abs=1e-10)
    # and their errors add: var(θ_a − θ_c) = 1/I_ab + 1/I_bc = 4/3 + 1/(3 · 2/3 · 1/3)
    assert ratings["a"].se == pytest.approx(math.sqrt(4 / 3 + 3 / 2), rel=1e-9)


def test_three_models_in_a_cycle_match_minorise_maximise():
    comparisons = [
        ("a", "b", 1.0),
        ("a", "b", 1.0),
        ("b", "a", 1.0),
        ("b", "c", 1.0),
        ("b", "c", 0.5),
        ("c", "b", 0.0),
        ("c", "a", 1.0),
        ("a", "c", 1.0),
        ("a", "c", 0.5),
    ]
    expected = minorise_maximise(["a", "b", "c"], comparisons)
    ratings = bradley_terry(comparisons, prior_sd=None)
    for model, theta in expected.items():
        assert ratings[model].theta == pytest.approx(theta, abs=1e-9)
    assert sum(r.theta for r in ratings.ratings) == pytest.approx(0.0, abs=1e-12)


def test_three_models_with_a_prior_match_brute_force():
    # a won every comparison: no MLE, but the MAP under the prior is finite
    comparisons = [
        ("a", "b", 1.0),
        ("a", "b", 1.0),
        ("b", "a", 0.0),
        ("c", "a", 0.0, 2),
        ("b", "c", 1.0),
        ("b", "c", 1.0),
        ("c", "b", 1.0),
        ("b", "c", 0.5, 0.5),
    ]
    expected = coordinate_ascent(["a", "b", "c"], comparisons, precision=1 / 2.0**2)
    ratings = bradley_terry(comparisons, prior_sd=2.0)
    for model, theta in expected.items():
        assert ratings[model].theta == pytest.approx(theta, abs=1e-9)
    fitted = {r.model: r.theta for r in ratings.ratings}
    best = log_posterior(expected, comparisons, 1 / 4)
    assert log_posterior(fitted, comparisons, 1 / 4) >= best - 1e-12
    assert sum(r.theta for r in ratings.ratings) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"\['a'\] won every comparison against \['b', 'c'\]"):
        bradley_terry(comparisons, prior_sd=None)


def test_score_equations_hold_at_the_mle():
    # without a prior, each model's fitted expected score equals its actual score
    rng = random.Random(0)
    models = ["r0", "r1", "r2", "r3", "r4"]
    comparisons = []
    for _ in range(300):
        a, b = rng.sample(models, 2)
        gap = models.index(a) - models.index(b)
        u = rng.random()
        outcome = 0.5 if u < 0.1 else float(u < 0.1 + 0.9 / (1 + math.exp(-gap)))
        comparisons.append((a, b, outcome, rng.choice([1, 2, 0.5])))
    ratings = bradley_terry(comparisons, prior_sd=None)
    for model in models:
        expected = actual = 0.0
        for a, b, outcome, w in comparisons:
            if model in (a, b):
                other = b if model == a else a
                expected += w * ratings.probability(model, other)
                actual += w * (outcome if model == a else 1 - outcome)
        assert expected == pytest.approx(actual, abs=1e-8)
        assert ratings[model].score == pytest.approx(actual)
    thetas = [ratings[m].theta for m in models]
    assert thetas == sorted(thetas)  # later rounds were made stronger


# ---------------------------------------------------------------- ties, weights, invariances


def test_a_tie_counts_half_a_win_each():
    # a win and a tie: a scored 1.5 of 2, P = ¾ again
    ratings = bradley_terry([("a", "b", 1.0), ("a", "b", 0.5)], prior_sd=None)
    assert ratings.difference("a", "b")[0] == pytest.approx(math.log(3), abs=1e-10)
    even = bradley_terry(
        [("a", "b", 1.0), ("a", "b", 0.5), ("b", "a", 0.5), ("a", "b", 0.0)], prior_sd=None
    )
    assert even["a"].theta == pytest.approx(0.0, abs=1e-12)
    assert bradley_terry([("a", "b", 0.5)], prior_sd=None)["a"].theta == pytest.approx(0.0)


def test_weights_count_comparisons():
    repeated = bradley_terry(THREE_OF_FOUR, prior_sd=None)
    weighted = bradley_terry([("a", "b", 1.0, 3), ("a", "b", 0.0)], prior_sd=None)
    fractional = bradley_terry([("a", "b", 1.0, 1.5), ("a", "b", 0.0, 0.5)], prior_sd=None)
    padded = bradley_terry([*THREE_OF_FOUR, ("b", "a", 1.0, 0)], prior_sd=None)
    for other in (weighted, padded):
        assert other["a"].theta == pytest.approx(repeated["a"].theta, abs=1e-12)
        assert other["a"].se == pytest.approx(repeated["a"].se, rel=1e-12)
    # the same odds from half the games: the same rating, a larger error
    assert fractional["a"].theta == pytest.approx(repeated["a"].theta, abs=1e-12)
    assert fractional["a"].se == pytest.approx(repeated["a"].se * math.sqrt(2), rel=1e-9)


def test_swapping_sides_and_outcome_changes_nothing():
    comparisons = [
        ("r0", "r1", 0.0),
        ("r1", "r2", 0.5),
        ("r2", "r0", 1.0, 2),
        ("r0", "r1", 1.0),
        ("r2", "r1", 1.0),
    ]
    swapped = [Comparison(b, a, 1.0 - o, *w) for a, b, o, *w in comparisons]
    for prior_sd in (None, 1.0):
        one = bradley_terry(comparisons, prior_sd=prior_sd, anchor="r0")
        two = bradley_terry(swapped, prior_sd=prior_sd, anchor="r0")
        for model in one.models:
            assert two[model].theta == pytest.approx(one[model].theta, abs=1e-12)
            assert two[model].se == pytest.approx(one[model].se, abs=1e-12)
        assert two.log_likelihood == pytest.approx(one.log_likelihood)
    table, mirrored = win_rates(comparisons), win_rates(swapped)
    assert table == {pair: mirrored[pair] for pair in table}


def test_the_anchor_only_shifts():
    comparisons = [
        ("r0", "r1", 0.0),
        ("r0", "r1", 0.0),
        ("r1", "r2", 0.0),
        ("r1", "r2", 1.0),
        ("r0", "r2", 0.0),
    ]
    centred = bradley_terry(comparisons)  # the default prior: r0 never scored
    anchored = bradley_terry(comparisons, anchor="r0")
    assert anchored.anchor == "r0" and centred.anchor is None
    assert anchored["r0"].theta == 0.0 and anchored["r0"].se == 0.0
    assert anchored["r0"].elo == 1000.0
    for model in ("r1", "r2"):
        difference, se = centred.difference(model, "r0")
        assert anchored[model].theta == pytest.approx(difference, abs=1e-12)
        assert anchored[model].se == pytest.approx(se, rel=1e-9)
    assert anchored.difference("r2", "r1") == pytest.approx(centred.difference("r2", "r1"))
    assert 0 < anchored["r2"].theta < anchored["r1"].theta  # r1 scored ¾ of its games, r2 ⅔


# ---------------------------------------------------------------- the prior


def test_the_prior_keeps_a_perfect_record_finite():
    five, ten = (bradley_terry([("a", "b", 1.0)] * n) for n in (5, 10))
    for ratings in (five, ten):
        assert math.isfinite(ratings["a"].theta) and ratings["a"].theta > 0
        assert math.isfinite(ratings["a"].se) and ratings["a"].se > 0
    assert ten["a"].theta > five["a"].theta
    weak = bradley_terry([("a", "b", 1.0)] * 20, prior_sd=100.0)
    assert math.isfinite(weak["a"].theta) and weak.iterations < 100
    with pytest.raises(ValueError, match=r"\['a'\] won every comparison against \['b'\]"):
        bradley_terry([("a", "b", 1.0)] * 5, prior_sd=None)


def test_the_prior_shrinks_towards_the_mean_and_fades_with_data():
    mle = bradley_terry(THREE_OF_FOUR, prior_sd=None)["a"].theta
    assert 0 < bradley_terry(THREE_OF_FOUR, prior_sd=1.0)["a"].theta < mle
    many = bradley_terry(THREE_OF_FOUR * 100)["a"].theta
    assert many == pytest.approx(mle, rel=1e-3)


# ---------------------------------------------------------------- Elo


def test_elo_scale():
    ratings = bradley_terry(THREE_OF_FOUR, prior_sd=None)
    a, b = ratings["a"], ratings["b"]
    assert abs(ELO_PER_LOGIT - 173.7178) < 1e-4  # 400 / ln 10
    assert a.elo - b.elo == pytest.approx(400 * math.log10(3))  # ≈ 190.8 points for 3:1 odds
    assert (a.elo + b.elo) / 2 == pytest.approx(1000.0)
    assert 1 / (1 + 10 ** (-(a.elo - b.elo) / 400)) == pytest.approx(0.75)
    assert a.elo_se == pytest.approx(ELO_PER_LOGIT * math.sqrt(1 / 3), rel=1e-9)
    shifted = bradley_terry(THREE_OF_FOUR, prior_sd=None, anchor="b", elo_base=1500.0)
    assert shifted["b"].elo == 1500.0
    assert shifted["a"].elo == pytest.approx(1500.0 + 400 * math.log10(3))


def test_elo_sequential_by_hand():
    ratings = elo_sequential([("a", "b", 1.0), ("b", "c", 1.0), ("a", "c", 0.5)])
    # 1. a (1000) beats b (1000): E_a = ½, a = 1000 + 32 · ½ = 1016, b = 984
    # 2. b (984) beats c (1000): E_b = 1 / (1 + 10^(16/400)) = 0.476990,
    #    change 32 · 0.523010 = 16.7363: b = 1000.7363, c = 983.2637
    # 3. a (1016) ties c (983.2637): E_a = 1 / (1 + 10^(−32.7363/400)) = 0.546971,
    #    change 32 · (½ − 0.546971) = −1.5031: a = 1014.4969, c = 984.7668
    assert list(ratings) == ["a", "b", "c"]
    assert ratings["a"] == pytest.approx(1014.4969, abs=1e-3)
    assert ratings["b"] == pytest.approx(1000.7363, abs=1e-3)
    assert ratings["c"] == pytest.approx(984.7668, abs=1e-3)


def test_elo_sequential_depends_on_order_and_conserves_points():
    games = [("a", "b", 1.0), ("a", "b", 1.0), ("a", "b", 0.0)]
    forward = elo_sequential(games)
    backward = elo_sequential(games[::-1])
    assert forward["a"] != pytest.approx(backward["a"])  # unlike the BT fit
    assert sum(forward.values()) == pytest.approx(2000.0)
    assert elo_sequential([("a", "b", 1.0, 2)], k=10, initial=1200) == {
        "a": pytest.approx(1210.0),
        "b": pytest.approx(1190.0),
    }
    assert bradley_terry(games)["a"].theta == pytest.approx(bradley_terry(games[::-1])["a"].theta)


# ---------------------------------------------------------------- win rates


def test_win_rate_table():
    table = win_rates([("a", "b", 1.0), ("a", "b", 1.0), ("b", "a", 0.5), ("b", "a", 1.0)])
    assert list(table) == [("a", "b"), ("b", "a")]
    # scores 1, 1, ½, 0: rate 2.5/4; variance Σ(x − 0.625)²/4 = 0.6875/4; se = sqrt(that/4)
    assert table[("a", "b")] == WinRate(
        rate=0.625, se=pytest.approx(math.sqrt(0.6875 / 16)), wins=2, ties=1, losses=1
    )
    assert table[("b", "a")] == WinRate(
        rate=0.375, se=pytest.approx(math.sqrt(0.6875 / 16)), wins=1, ties=1, losses=2
    )
    # no ties: the binomial sqrt(p (1 − p) / N)
    binomial = win_rates(THREE_OF_FOUR)[("a", "b")]
    assert binomial.rate == 0.75
    assert binomial.se == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    assert (binomial.wins, binomial.ties, binomial.losses) == (3, 0, 1)
    weighted = win_rates([("a", "b", 1.0, 3), ("a", "b", 0.0), ("a", "c", 1.0, 0)])
    assert weighted[("a", "b")].rate == 0.75 and weighted[("a", "b")].wins == 3
    assert math.isnan(weighted[("a", "c")].rate) and math.isnan(weighted[("c", "a")].se)


# ---------------------------------------------------------------- errors


ALL = [win_rates, bradley_terry, elo_sequential]


@pytest.mark.parametrize("fit", ALL)
@pytest.mark.parametrize(
    ("comparisons", "message"),
    [
        ([], r"^no comparisons to rate$"),
        (iter(()), r"^no comparisons to rate$"),
        (
            [("a", "b", 1.0), ("a", "a", 1.0)],
            r"^comparison 1 \('a' against 'a'\): a model compared with itself",
        ),
        ([("a", "b", 0.7)], r"comparison 0 .*outcome 0\.7 is not 1\.0 \(a won\), 0\.0 \(b won\)"),
        ([("a", "b", math.nan)], r"outcome nan is not 1\.0"),
        ([("a", "b", True)], r"outcome True is not 1\.0"),
        ([("a", "b", "1")], r"outcome '1' is not 1\.0"),
        ([("a", "b", 1.0, -1)], r"weight -1 is negative \(a weight counts comparisons"),
        ([("a", "b", 1.0, math.inf)], r"weight inf is not finite"),
        ([("a", "b", 1.0, "2")], r"weight '2' is not a number"),
        ([("a", "b")], r"comparison 0: expected \(model_a, model_b, outcome\[, weight\]\)"),
        ([("a", "b", 1.0, 0), ("b", "a", 1.0, 0.0)], r"all 2 comparisons have weight 0"),
    ],
)
def test_bad_comparisons(fit, comparisons, message):
    with pytest.raises(ValueError, match=message):
        fit(comparisons)


def test_bradley_terry_errors():
    with pytest.raises(ValueError, match=r"anchor 'r9' never played; the models are \['a', 'b'\]"):
        bradley_terry(THREE_OF_FOUR, anchor="r9")
    disconnected = [("a", "b", 1.0), ("c", "d", 0.0), ("b", "c", 1.0, 0), ("e", "a", 0.5)]
    for prior_sd in (None, 4.0):
        with pytest.raises(
            ValueError,
            match=r"fall into 2 groups of models that never met.*\['a', 'b', 'e'\]; "
            r"\['c', 'd'\]\. Ratings across groups are not comparable",
        ):
            bradley_terry(disconnected, prior_sd=prior_sd)
    with pytest.raises(ValueError, match=r"\['a', 'b'\] won every comparison against \['c'\]"):
        bradley_terry(
            [("a", "b", 1.0), ("b", "a", 1.0), ("a", "c", 1.0), ("c", "b", 0.0)], prior_sd=None
        )
    for prior_sd in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="prior_sd must be a positive number of logits"):
            bradley_terry(THREE_OF_FOUR, prior_sd=prior_sd)
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        bradley_terry(THREE_OF_FOUR, tolerance=0.0)
    with pytest.raises(ValueError, match="max_iterations must be at least 1"):
        bradley_terry(THREE_OF_FOUR, max_iterations=0)
    with pytest.raises(RuntimeError, match="did not converge in 1 Newton steps"):
        bradley_terry(THREE_OF_FOUR, max_iterations=1)
    with pytest.raises(KeyError, match=r"'z' is not rated; the models are \['a', 'b'\]"):
        bradley_terry(THREE_OF_FOUR)["z"]


def test_elo_sequential_errors():
    for k in (0.0, -32.0, math.nan):
        with pytest.raises(ValueError, match="k must be a positive number of Elo points"):
            elo_sequential(THREE_OF_FOUR, k=k)
