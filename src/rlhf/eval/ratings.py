"""Model-against-model ratings: pairwise win rates, Bradley–Terry strengths and Elo.

Each comparison sets a reply of one model (a checkpoint: the policy after round 0, 1, 2, ...)
against a reply of another to the same prompt, judged by a person, a simulated annotator or
a judge. From many of them this module gives

- :func:`win_rates`: the pairwise table, how often each model beat each other one;
- :func:`bradley_terry`: one strength per model fitted to all comparisons at once by
  penalised maximum likelihood, with standard errors, on the logit and the Elo scale;
- :func:`elo_sequential`: the classic online Elo update, for those who expect it.

The Bradley–Terry model (Bradley & Terry 1952; Zermelo 1929; Hunter 2004, eq. 1 with
γ_i = exp θ_i) gives each model i a strength θ_i in logits and says::

    P(i ≻ j) = σ(θ_i − θ_j) = 1 / (1 + exp(−(θ_i − θ_j)))

A tie counts as half a win for each side, as in chess scores and Chatbot Arena: the BT
likelihood with fractional scores, not a model of ties (Rao & Kupper 1967 and Davidson 1970
add a tie parameter). Only differences θ_i − θ_j are identified, so the ratings are either
centred (mean 0) or fixed at 0 for an ``anchor`` model (e.g. the round-0 checkpoint).

On the Elo scale a rating is ``elo_base + ELO_PER_LOGIT · θ`` with ``ELO_PER_LOGIT`` = 400 /
ln 10 ≈ 173.7 Elo per logit: Elo's convention that a 400-point gap is 10:1 odds, P(i ≻ j) =
1 / (1 + 10^(−(E_i − E_j) / 400)), which is the same curve as σ(θ_i − θ_j).

Weights are frequency weights: a comparison of weight w counts as w comparisons (so a tally
"r1 beat r0 7 times" can be one record of weight 7) in the win rates, their standard errors,
the Bradley–Terry likelihood and its Fisher information alike. A weight of 0 drops a
comparison. Models are named by strings; M is the number of comparisons, K of models.

Pure Python numbers in and out; the fit imports torch for its K × K linear algebra only when
it runs, so ``rlhf.eval`` stays importable without it (a report re-renders from JSON alone).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from rlhf.eval.stats import WinRate

if TYPE_CHECKING:
    import torch

ELO_PER_LOGIT = 400 / math.log(10)  # Elo points per logit of θ: 400 points = odds of 10:1
ELO_BASE = 1000.0  # the Elo rating of θ = 0 (the anchor, or the mean of centred ratings)
DEFAULT_PRIOR_SD = 4.0  # logits (≈ 695 Elo): see bradley_terry's ``prior_sd``
OUTCOMES = (0.0, 0.5, 1.0)  # b won, a tie, a won


class Comparison(NamedTuple):
    """One judged comparison: model a's reply against model b's (a plain tuple
    ``(model_a, model_b, outcome[, weight])`` is accepted wherever this is)."""

    model_a: str
    model_b: str
    outcome: float  # 1.0: a's reply won, 0.0: b's won, 0.5: a tie
    weight: float = 1  # frequency weight ≥ 0: this record counts as ``weight`` comparisons


ComparisonLike = Comparison | tuple[str, str, float] | tuple[str, str, float, float]


def _checked(comparisons: Iterable[ComparisonLike]) -> list[Comparison]:
    """The comparisons as :class:`Comparison` records, or a ValueError naming the first bad
    one by its position (0-based) and models."""
    checked = []
    for index, item in enumerate(comparisons):
        try:
            comparison = Comparison(*item)
        except TypeError:
            raise ValueError(
                f"comparison {index}: expected (model_a, model_b, outcome[, weight]), got {item!r}"
            ) from None
        a, b, outcome, weight = comparison
        where = f"comparison {index} ({a!r} against {b!r})"
        if a == b:
            raise ValueError(f"{where}: a model compared with itself says nothing about its rating")
        if isinstance(outcome, bool) or outcome not in OUTCOMES:
            raise ValueError(
                f"{where}: outcome {outcome!r} is not 1.0 (a won), 0.0 (b won) or 0.5 (a tie)"
            )
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"{where}: weight {weight!r} is not a number")
        if not math.isfinite(weight):
            raise ValueError(f"{where}: weight {weight!r} is not finite")
        if weight < 0:
            raise ValueError(
                f"{where}: weight {weight!r} is negative (a weight counts comparisons, ≥ 0)"
            )
        checked.append(comparison)
    if not checked:
        raise ValueError("no comparisons to rate")
    if not any(c.weight > 0 for c in checked):
        raise ValueError(f"all {len(checked)} comparisons have weight 0: nothing to rate")
    return checked


# ---------------------------------------------------------------- win rates


def win_rates(comparisons: Iterable[ComparisonLike]) -> dict[tuple[str, str], WinRate]:
    """The pairwise table: for each ordered pair of models that met, how often the first beat
    the second.

    Both orders are in the table, ``(a, b)`` and ``(b, a)``, mirrored (wins and losses
    swapped, rate → 1 − rate, the same standard error), in order of first appearance. For the
    comparisons c of a pair, with score x_c ∈ {1, ½, 0} of the first model and weight w_c,
    N = Σ w_c::

        rate = Σ w_c x_c / N
        se   = sqrt(Σ w_c (x_c − rate)² / N / N)

    the binomial standard error sqrt(rate (1 − rate) / N) when nothing ties; ties, which
    score ½ with certainty, lower it. (``stats.win_rate`` divides by N − 1 instead: the
    sample-variance version, NaN for one prompt.) A perfect record has se 0: the plug-in
    binomial says nothing there; :func:`bradley_terry` with its prior does. ``wins``,
    ``ties`` and ``losses`` are summed weights: counts when every weight is the default 1. A
    pair whose comparisons all have weight 0 has rate and se NaN.
    """
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for a, b, outcome, weight in _checked(comparisons):
        rows.setdefault((a, b), []).append((outcome, weight))
        rows.setdefault((b, a), []).append((1.0 - outcome, weight))
    table = {}
    for pair, scored in rows.items():
        total = sum(w for _, w in scored)
        if total > 0:
            rate = math.fsum(w * x for x, w in scored) / total
            variance = math.fsum(w * (x - rate) ** 2 for x, w in scored) / total
            se = math.sqrt(variance / total)
        else:
            rate = se = math.nan
        table[pair] = WinRate(
            rate=rate,
            se=se,
            wins=sum(w for x, w in scored if x == 1.0),
            ties=sum(w for x, w in scored if x == 0.5),
            losses=sum(w for x, w in scored if x == 0.0),
        )
    return table


# ---------------------------------------------------------------- Bradley–Terry


@dataclass(frozen=True)
class Rating:
    """One model's fitted Bradley–Terry strength."""

    model: str
    theta: float  # strength in logits, P(i ≻ j) = σ(θ_i − θ_j); 0 at the anchor / mean 0
    se: float  # standard error of theta, logits (0 for the anchor, which is fixed)
    elo: float  # elo_base + ELO_PER_LOGIT · theta
    elo_se: float  # ELO_PER_LOGIT · se
    games: float  # summed weight of the comparisons it played
    score: float  # summed weight of its wins, a tie counting ½


@dataclass(frozen=True)
class Ratings:
    """A Bradley–Terry fit (:func:`bradley_terry`): one :class:`Rating` per model."""

    ratings: tuple[Rating, ...]  # [K], models in order of first appearance
    covariance: tuple[tuple[float, ...], ...]  # [K, K] covariance of the thetas, logits²
    anchor: str | None  # the model fixed at θ = 0; None: the ratings are centred (mean 0)
    prior_sd: float | None  # σ of the Gaussian prior on each θ, logits; None: plain MLE
    log_likelihood: float  # ℓ(θ̂), eq. (1) of bradley_terry, without the prior's term
    iterations: int  # Newton steps taken

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(r.model for r in self.ratings)

    def _index(self, model: str) -> int:
        for index, rating in enumerate(self.ratings):
            if rating.model == model:
                return index
        raise KeyError(f"{model!r} is not rated; the models are {list(self.models)}")

    def __getitem__(self, model: str) -> Rating:
        return self.ratings[self._index(model)]

    def probability(self, a: str, b: str) -> float:
        """The fitted P(a ≻ b) = σ(θ_a − θ_b)."""
        return 1.0 / (1.0 + math.exp(-(self[a].theta - self[b].theta)))

    def difference(self, a: str, b: str) -> tuple[float, float]:
        """θ_a − θ_b in logits and its standard error, sqrt(C_aa + C_bb − 2 C_ab) from the
        covariance (not the two ratings' own errors: they are correlated)."""
        i, j = self._index(a), self._index(b)
        c = self.covariance
        variance = c[i][i] + c[j][j] - 2 * c[i][j]
        return self.ratings[i].theta - self.ratings[j].theta, math.sqrt(max(variance, 0.0))


@dataclass(frozen=True)
class _Tally:
    models: list[str]  # [K] in order of first appearance
    games: list[list[float]]  # [K, K] n_ij: summed weight of i against j (symmetric)
    scores: list[list[float]]  # [K, K] s_ij: summed score of i against j; s_ij + s_ji = n_ij


def _tally(comparisons: Sequence[Comparison]) -> _Tally:
    index: dict[str, int] = {}
    for c in comparisons:
        index.setdefault(c.model_a, len(index))
        index.setdefault(c.model_b, len(index))
    k = len(index)
    games = [[0.0] * k for _ in range(k)]
    scores = [[0.0] * k for _ in range(k)]
    for a, b, outcome, weight in comparisons:
        i, j = index[a], index[b]
        games[i][j] += weight
        games[j][i] += weight
        scores[i][j] += weight * outcome
        scores[j][i] += weight * (1.0 - outcome)
    return _Tally(list(index), games, scores)


def _reachable(start: int, edges: list[list[bool]]) -> set[int]:
    seen, stack = {start}, [start]
    while stack:
        node = stack.pop()
        for other, edge in enumerate(edges[node]):
            if edge and other not in seen:
                seen.add(other)
                stack.append(other)
    return seen


def _groups(edges: list[list[bool]]) -> list[list[int]]:
    """The strongly connected components of a directed graph given as a [K, K] adjacency
    matrix (for a symmetric one: the connected components), each in index order, ordered by
    their first index. K is small (checkpoints), so reachability from every node will do."""
    k = len(edges)
    reverse = [[edges[j][i] for j in range(k)] for i in range(k)]
    groups: list[list[int]] = []
    placed: set[int] = set()
    for node in range(k):
        if node not in placed:
            group = sorted(_reachable(node, edges) & _reachable(node, reverse))
            placed.update(group)
            groups.append(group)
    return groups


def _check_connected(tally: _Tally) -> None:
    """Every model must be linked to every other by a chain of comparisons of weight > 0."""
    met = [[n > 0 for n in row] for row in tally.games]
    groups = _groups(met)
    if len(groups) > 1:
        named = "; ".join(str([tally.models[i] for i in group]) for group in groups)
        raise ValueError(
            f"the comparisons fall into {len(groups)} groups of models that never met, "
            f"directly or through others: {named}. Ratings across groups are not comparable: "
            "add comparisons between the groups, or rate each group on its own"
        )


def _check_finite_mle(tally: _Tally) -> None:
    """Without a prior the maximum-likelihood ratings exist (and are unique) iff in every
    split of the models into two groups each group scored against the other at least once
    (Ford 1957; Hunter 2004's Assumption 1): the "i scored against j" graph (a win or a tie,
    weight > 0) is strongly connected. A group that was never scored against would be
    infinitely stronger than the rest: name one."""
    k = len(tally.models)
    scored = [[tally.scores[i][j] > 0 for j in range(k)] for i in range(k)]
    groups = _groups(scored)
    if len(groups) == 1:
        return
    for group in groups:  # a group no outsider scored against exists: the condensation is a DAG
        outside = [j for j in range(k) if j not in group]
        if not any(scored[j][i] for j in outside for i in group):
            beaten = [j for j in outside if any(tally.games[i][j] > 0 for i in group)]
            raise ValueError(
                "without a prior the maximum-likelihood ratings are infinite: "
                f"{[tally.models[i] for i in group]} won every comparison against "
                f"{[tally.models[j] for j in beaten]}, so no finite rating gap fits (every "
                "split of the models needs a win or a tie each way: Ford 1957, Hunter 2004). "
                f"Pass prior_sd (e.g. {DEFAULT_PRIOR_SD}) for finite ratings"
            )


def bradley_terry(
    comparisons: Iterable[ComparisonLike],
    *,
    anchor: str | None = None,
    prior_sd: float | None = DEFAULT_PRIOR_SD,
    elo_base: float = ELO_BASE,
    tolerance: float = 1e-9,
    max_iterations: int = 100,
) -> Ratings:
    """Bradley–Terry strengths of the models, by penalised maximum likelihood (Newton).

    With n_ij the summed weight of the comparisons between models i and j and s_ij the summed
    score of i in them (a win 1, a tie ½; s_ij + s_ji = n_ij), the log-likelihood (Hunter
    2004's, with γ_i = exp θ_i) and the penalised one are::

        ℓ(θ)   = Σ_{i≠j} s_ij · log σ(θ_i − θ_j)                                      (1)
        ℓ_λ(θ) = ℓ(θ) − λ/2 · Σ_i θ_i²,        λ = 1 / prior_sd²  (0 without a prior)  (2)

    (2) is the log-posterior, up to a constant, under independent N(0, prior_sd²) priors on
    the θ_i. Its gradient and negative Hessian, with p_ij = σ(θ_i − θ_j), are::

        g_i(θ) = Σ_j (s_ij − n_ij p_ij) − λ θ_i                                      (3)
        H(θ)   = L(θ) + λ I,   L = diag(W 1) − W,   W_ij = n_ij p_ij (1 − p_ij)         (4)

    L is the Fisher information of (1), observed and expected alike (BT is a logistic
    regression on the differences: its link is canonical). The fit is Newton–Raphson on (2),
    the iteratively reweighted least squares of that logistic regression, from θ = 0::

        θ ← θ + t · H(θ)⁻¹ g(θ)                                                      (5)

    with t = 1, halved while ℓ_λ would fall (ℓ_λ is concave, strictly so with a prior or a
    connected graph, so this converges to the unique maximum), until the largest component
    of the Newton step is below ``tolerance``. Without a prior H is singular along
    1 = (1, …, 1) (only differences are identified) and L + 11ᵀ/K stands in for it: it acts
    as L on the differences, where g lies, and keeps Σ θ_i = 0. With a prior the optimum has
    Σ θ_i = 0 too: (3) sums to −λ Σ θ_i, as the likelihood terms cancel in pairs.

    At the optimum, without a prior, each model's fitted expected score Σ_j n_ij p_ij equals
    its actual score Σ_j s_ij (Zermelo's likelihood equations).

    Args:
        comparisons: [M] :class:`Comparison` records or ``(model_a, model_b, outcome[,
            weight])`` tuples. Their order does not matter.
        anchor: the model whose θ is fixed at 0 (its se is then 0 and the others' se is that
            of their difference from it); None: the ratings are centred, Σ_i θ_i = 0. Either
            way only a shift: the differences and their errors are the same.
        prior_sd: σ in logits of the Gaussian prior N(0, σ²) on every θ_i (an L2 penalty
            λ = 1/σ²), so that a model that won or lost every comparison still gets a finite
            rating. The default 4 logits (≈ 695 Elo) adds information λ = 1/16 per model,
            about a quarter of one even game's (p (1 − p) = ¼): negligible once a model has
            played tens of comparisons, enough to keep a perfect record finite. It shrinks
            every rating towards the mean a little. None: the plain maximum-likelihood fit,
            which exists only when every split of the models has a win or a tie each way
            (ValueError otherwise).
        elo_base: the Elo rating of θ = 0 (the anchor, or the mean); Elo = elo_base +
            ELO_PER_LOGIT · θ with ELO_PER_LOGIT = 400 / ln 10.
        tolerance: stop when no component of the Newton step exceeds this, logits.
        max_iterations: Newton steps at most (RuntimeError past them: it takes about ten).

    Returns:
        :class:`Ratings`, models in order of first appearance. The covariance of θ̂ is the
        inverse of (4) at the optimum, mapped through the shift to the anchor or the mean:
        T H⁻¹ Tᵀ with T = I − 1 e_anchorᵀ or I − 11ᵀ/K (without a prior, the inverse Fisher
        information on the differences, L⁺; with one, the Laplace approximation of the
        posterior). The standard errors are the square roots of its diagonal: large-sample
        ones, optimistic for a handful of comparisons per pair.

    Raises:
        ValueError: no comparisons, a model compared with itself, an outcome outside {0, ½,
            1}, a negative or non-finite weight, an ``anchor`` that never played, a
            non-positive ``prior_sd``, or comparisons that fall into groups that never met
            (named). The last holds with a prior too: the prior would make the fit well
            defined, but would set the groups' relative ratings by itself (all near 0), a
            number that compares nothing. Without a prior also a group of models that won
            every comparison against the rest (named): its maximum-likelihood rating is
            infinite.
    """
    checked = _checked(comparisons)
    if prior_sd is not None and not (math.isfinite(prior_sd) and prior_sd > 0):
        raise ValueError(
            f"prior_sd must be a positive number of logits (None: no prior), got {prior_sd!r}"
        )
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations!r}")
    tally = _tally(checked)
    if anchor is not None and anchor not in tally.models:
        raise ValueError(f"anchor {anchor!r} never played; the models are {tally.models}")
    _check_connected(tally)
    if prior_sd is None:
        _check_finite_mle(tally)

    import torch  # here, not at the top: rlhf.eval imports without torch

    theta, covariance, iterations = _newton(tally, prior_sd, tolerance, max_iterations)
    k = len(tally.models)
    # T: the shift to the anchor (θ_i − θ_anchor) or to the mean (θ_i − mean θ)
    shift = torch.eye(k, dtype=torch.float64)
    if anchor is None:
        shift -= 1.0 / k
    else:
        shift[:, tally.models.index(anchor)] -= 1.0
    theta = shift @ theta  # [K]
    covariance = shift @ covariance @ shift.T  # [K, K]
    log_likelihood = float(_log_likelihood(theta, torch.tensor(tally.scores, dtype=torch.float64)))

    ratings = []
    for i, model in enumerate(tally.models):
        value = float(theta[i])
        se = math.sqrt(max(float(covariance[i, i]), 0.0))
        ratings.append(
            Rating(
                model=model,
                theta=value,
                se=se,
                elo=elo_base + ELO_PER_LOGIT * value,
                elo_se=ELO_PER_LOGIT * se,
                games=math.fsum(tally.games[i]),
                score=math.fsum(tally.scores[i]),
            )
        )
    return Ratings(
        ratings=tuple(ratings),
        covariance=tuple(tuple(float(x) for x in row) for row in covariance),
        anchor=anchor,
        prior_sd=prior_sd,
        log_likelihood=log_likelihood,
        iterations=iterations,
    )


def _log_likelihood(theta: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Eq. (1): Σ_ij s_ij log σ(θ_i − θ_j), with theta [K] and scores [K, K]."""
    import torch.nn.functional as F

    return (scores * F.logsigmoid(theta[:, None] - theta[None, :])).sum()


def _newton(
    tally: _Tally, prior_sd: float | None, tolerance: float, max_iterations: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Maximise eq. (2) by eq. (5) from θ = 0: θ̂ [K] (Σ θ̂_i = 0), the inverse of the
    negative Hessian there [K, K] (L + 11ᵀ/K standing in without a prior) and the steps."""
    import torch

    games = torch.tensor(tally.games, dtype=torch.float64)  # [K, K] n_ij
    scores = torch.tensor(tally.scores, dtype=torch.float64)  # [K, K] s_ij
    k = games.shape[0]
    precision = 0.0 if prior_sd is None else prior_sd**-2  # λ
    # what completes L(θ) to an invertible matrix: λI, or 11ᵀ/K on the unidentified mean
    completion = (
        precision * torch.eye(k, dtype=torch.float64)
        if precision > 0
        else torch.full((k, k), 1.0 / k, dtype=torch.float64)
    )

    def objective(theta: torch.Tensor) -> float:  # eq. (2)
        return float(_log_likelihood(theta, scores) - precision / 2 * (theta @ theta))

    def gradient_and_information(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = torch.sigmoid(theta[:, None] - theta[None, :])  # [K, K] p_ij
        gradient = (scores - games * p).sum(dim=1) - precision * theta  # [K], eq. (3)
        w = games * p * (1 - p)  # [K, K] W_ij
        return gradient, torch.diag(w.sum(dim=1)) - w + completion  # eq. (4)

    theta = torch.zeros(k, dtype=torch.float64)
    for iteration in range(1, max_iterations + 1):
        gradient, information = gradient_and_information(theta)
        step = torch.linalg.solve(information, gradient)  # [K]
        size = float(step.abs().max())
        current = objective(theta)
        # step halving: accept a step that does not lower ℓ_λ beyond rounding
        slack = 1e-12 * max(1.0, abs(current))
        t = 1.0
        while objective(theta + t * step) < current - slack and t > 2.0**-40:
            t /= 2
        theta = theta + t * step
        if size < tolerance:
            _, information = gradient_and_information(theta)
            return theta, torch.linalg.inv(information), iteration
    raise RuntimeError(
        f"the Bradley–Terry fit did not converge in {max_iterations} Newton steps (last step "
        f"{size:.3g} logits, tolerance {tolerance:g}): raise max_iterations or use a prior"
    )


# ---------------------------------------------------------------- sequential Elo


def elo_sequential(
    comparisons: Iterable[ComparisonLike], k: float = 32.0, initial: float = ELO_BASE
) -> dict[str, float]:
    """The classic online Elo update (Elo 1978), one comparison at a time in the given order.

    A model enters at ``initial``. For each comparison, with a's score S_a ∈ {1, ½, 0} and
    weight w::

        E_a = 1 / (1 + 10^((R_b − R_a) / 400))      (= σ((R_a − R_b) / ELO_PER_LOGIT))
        R_a ← R_a + k · w · (S_a − E_a)
        R_b ← R_b − k · w · (S_a − E_a)

    so the ratings always sum to ``initial`` × K. The result depends on the order of the
    comparisons (the same games in another order give other ratings) and recent games weigh
    more: it suits a stream of games among changing players, not a fixed set of checkpoints.
    :func:`bradley_terry` fits all comparisons at once, order-free, with standard errors;
    prefer it for checkpoints. A weight scales k for that comparison.

    Returns:
        ``{model: rating}`` in Elo points, models in order of first appearance.
    """
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"k must be a positive number of Elo points, got {k!r}")
    ratings: dict[str, float] = {}
    for a, b, outcome, weight in _checked(comparisons):
        rating_a = ratings.setdefault(a, initial)
        rating_b = ratings.setdefault(b, initial)
        expected = 1.0 / (1.0 + 10.0 ** ((rating_b - rating_a) / 400.0))
        change = k * weight * (outcome - expected)
        ratings[a] = rating_a + change
        ratings[b] = rating_b - change
    return ratings


def comparisons_from_rows(rows: Iterable[dict]) -> list[Comparison]:
    """The model-against-model comparisons in a feedback export (``rlhf feedback export``
    rows of a campaign whose responses name their models): a preference row's
    ``chosen_model`` beat its ``rejected_model``; a ranking row with ``models`` gives every
    pair of its responses, the better-ranked one winning (equal ranks: a tie). Two replies of
    the same model say nothing about models and are left out, as are rows naming none."""
    out: list[Comparison] = []
    for index, row in enumerate(rows):
        if row.get("chosen_model") is not None and row.get("rejected_model") is not None:
            chosen, rejected = str(row["chosen_model"]), str(row["rejected_model"])
            if chosen != rejected:
                out.append(Comparison(chosen, rejected, 1.0))
        elif row.get("models") is not None:
            models, ranks = row["models"], row.get("ranks")
            if not isinstance(ranks, list) or len(ranks) != len(models):
                raise ValueError(f"row {index}: models needs a ranks list of the same length")
            for i in range(len(models)):
                for j in range(i + 1, len(models)):
                    if models[i] != models[j]:
                        outcome = 0.5 if ranks[i] == ranks[j] else float(ranks[i] < ranks[j])
                        out.append(Comparison(str(models[i]), str(models[j]), outcome))
    return out
