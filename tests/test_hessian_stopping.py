"""The stopping rule as a unit: continue, stop, out of products or give up, on constructed Ritz data."""

import pytest
import torch

from lightning_shortcut.hessian import MatrixOperator
from lightning_shortcut.hessian.solvers._stopping import (
    MIN_PRODUCTS,
    SEPARATED_MIN_PRODUCTS,
    WARM_MIN_PRODUCTS,
    Check,
    Decision,
    Ends,
    StoppingRule,
    WarmEvidence,
    warm_limit,
)

torch.manual_seed(0)

DIM = 6
SPACE = MatrixOperator(torch.eye(DIM, dtype=torch.float64))
TOP_AND_BOTTOM = Ends(top=True, bottom=True)
TOP = Ends(top=True)


def _unit(index):
    vector = torch.zeros(DIM, dtype=torch.float64)
    vector[index] = 1.0
    return vector


def _check(products, values, residual=1e-9, **kwargs):
    values = torch.tensor(sorted(values), dtype=torch.float64)
    return Check(products, values, torch.full_like(values, residual), **kwargs)


def _decisions(rule, values_at, last, **kwargs):
    """The rule's decision at checks 1, 2, ..., ``last`` (values given by ``values_at(products)``),
    up to the first that is not ``CONTINUE``."""
    decisions = []
    for products in range(1, last + 1):
        decisions.append(rule.assess(_check(products, values_at(products), **kwargs)).decision)
        if decisions[-1] is not Decision.CONTINUE:
            break
    return decisions


def _stopped_at(decisions, decision=Decision.STOP):
    assert decisions[-1] is decision, decisions[-1]
    assert all(d is Decision.CONTINUE for d in decisions[:-1])
    return len(decisions)


def test_a_cold_run_pays_the_floor_then_stops_once_its_ends_have_settled():
    rule = StoppingRule(TOP_AND_BOTTOM, tol=1e-3, max_iter=300, space=SPACE)
    decisions = _decisions(rule, lambda _: [-1.0, 0.0, 0.5, 2.0], 40)
    assert _stopped_at(decisions) == MIN_PRODUCTS


def test_a_cold_run_stops_once_its_ends_held_still_over_the_last_half_of_its_products():
    """The top moved by 5 tolerances at 12 products: at 20 it has not held since 10, at 24 it has
    held since 12."""
    rule = StoppingRule(TOP_AND_BOTTOM, tol=1e-3, max_iter=300, space=SPACE)
    decisions = _decisions(rule, lambda products: [-1.0, 0.0, 2.0 + 0.01 * (products < 12)], 40)
    assert _stopped_at(decisions) == 24


@pytest.mark.parametrize("gap, stops_at", [(1.0, SEPARATED_MIN_PRODUCTS), (1e-3, MIN_PRODUCTS)])
def test_a_separated_top_stops_at_the_separated_floor_and_a_cluster_keeps_the_full_one(
    gap, stops_at
):
    """The top alone: separated (a gap of 500 tolerances) from 10 products, a cluster (0.5) at 20."""
    rule = StoppingRule(TOP, tol=1e-3, max_iter=300, space=SPACE)
    decisions = _decisions(rule, lambda _: [-1.0, 0.0, 2.0 - gap, 2.0], 40)
    assert _stopped_at(decisions) == stops_at


def test_a_separated_top_keeps_the_full_floor_where_the_bottom_is_wanted_too():
    rule = StoppingRule(TOP_AND_BOTTOM, tol=1e-3, max_iter=300, space=SPACE)
    assert _stopped_at(_decisions(rule, lambda _: [-1.0, 0.0, 1.0, 2.0], 40)) == MIN_PRODUCTS


def test_ends_still_moving_keep_a_cold_run_going_until_it_is_out_of_products():
    """Bounds met at every check, but the top grows by 2 tolerances a product: no Krylov space
    that has doubled without finding anything beyond."""
    rule = StoppingRule(TOP_AND_BOTTOM, tol=1e-3, max_iter=30, space=SPACE)
    decisions = _decisions(rule, lambda products: [-1.0, 0.0, 2.0 + 4e-3 * products], 30)
    assert _stopped_at(decisions, Decision.OUT_OF_PRODUCTS) == 30


def test_error_bounds_are_kato_temple_where_the_gap_is_reliable_and_decide_convergence():
    rule = StoppingRule(TOP_AND_BOTTOM, tol=1e-3, max_iter=300, space=SPACE)
    values = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    residuals = torch.tensor([1e-3, 1e-3, 0.1], dtype=torch.float64)
    assessment = rule.assess(Check(MIN_PRODUCTS, values, residuals))
    assert assessment.top_error == pytest.approx(0.1**2 / (2.0 - 1.0 - 1e-3))
    assert assessment.bottom_error == pytest.approx(1e-3**2 / (1.0 - 1e-3 - 0.0))
    assert assessment.scale == 2.0
    # the top's bound (1e-2) is above tol * max|lambda| = 2e-3: go on, even past the floor
    assert assessment.decision is Decision.CONTINUE
    assert rule.assess(Check(MIN_PRODUCTS + 1, values, residuals / 100)).decision is Decision.STOP


def test_an_invariant_subspace_stops_at_once():
    rule = StoppingRule(TOP_AND_BOTTOM, tol=1e-3, max_iter=300, space=SPACE)
    assessment = rule.assess(_check(2, [-1.0, 2.0], residual=0.5, beta=0.0))
    assert assessment.decision is Decision.STOP
    # no bound tighter than the products' rounding (4 eps of the dtype, relative)
    rounding = 4 * torch.finfo(torch.float64).eps * 2.0
    assert assessment.top_error == assessment.bottom_error == pytest.approx(rounding, abs=0)


def _warm_rule(frontier=2.0, inherited=(0,), tol=1e-3, max_iter=300):
    rows = torch.stack([_unit(index) for index in inherited])
    return StoppingRule(TOP, tol, max_iter, SPACE, WarmEvidence(rows, (frontier, None)))


def test_a_warm_run_covered_by_its_evidence_stops_once_converged():
    decisions = _decisions(
        _warm_rule(), lambda _: [-1.0, 0.0, 1.9, 2.0], 40, ritz_vector=lambda end: _unit(0)
    )
    assert _stopped_at(decisions) == WARM_MIN_PRODUCTS


def test_a_warm_run_goes_on_while_its_ends_move():
    """Converged means settled over two products: a top still growing by 2 tolerances a product
    is not, and a warm run that does not settle is given up at its budget."""
    decisions = _decisions(
        _warm_rule(),
        lambda products: [-1.0, 0.0, 2.0 + 4e-3 * products],
        40,
        ritz_vector=lambda end: _unit(0),
    )
    assert _stopped_at(decisions, Decision.GIVE_UP) == warm_limit(1e-3, 300)


def test_a_warm_run_whose_extreme_retreated_past_its_frontier_is_given_up():
    """The tracked top fell by 5% below the values the previous measurement covered: others can be
    on top now, unseen."""
    decisions = _decisions(
        _warm_rule(frontier=2.0), lambda _: [-1.0, 0.0, 1.9], 40, ritz_vector=lambda end: _unit(0)
    )
    assert _stopped_at(decisions, Decision.GIVE_UP) == WARM_MIN_PRODUCTS
    # within half a tolerance of the frontier, it stops
    decisions = _decisions(
        _warm_rule(frontier=1.9 + 0.9e-3), lambda _: [-1.0, 0.0, 1.9], 40,
        ritz_vector=lambda end: _unit(0),
    )  # fmt: skip
    assert _stopped_at(decisions) == WARM_MIN_PRODUCTS


def test_a_warm_run_converged_outside_the_inherited_directions_is_given_up():
    decisions = _decisions(
        _warm_rule(), lambda _: [-1.0, 0.0, 2.0], 40, ritz_vector=lambda end: _unit(3)
    )
    assert _stopped_at(decisions, Decision.GIVE_UP) == WARM_MIN_PRODUCTS
    # mostly inherited (a projection of norm 0.8): stops
    partly = 0.8 * _unit(0) + 0.6 * _unit(3)
    decisions = _decisions(
        _warm_rule(), lambda _: [-1.0, 0.0, 2.0], 40, ritz_vector=lambda end: partly
    )
    assert _stopped_at(decisions) == WARM_MIN_PRODUCTS


def test_the_warm_budget_binds_before_the_evidence_and_only_warm_runs_have_one():
    limit = warm_limit(1e-2, 300)
    assert limit == 12 and warm_limit(1e-3, 300) == 18 and warm_limit(1e-2, 8) == 8
    good = _check(limit, [-1.0, 2.0], ritz_vector=lambda end: _unit(0))
    assert _warm_rule(tol=1e-2).assess(good).decision is Decision.GIVE_UP
    cold = StoppingRule(TOP, 1e-2, 300, SPACE)
    assert cold.warm_limit is None
    assert cold.assess(good).decision is Decision.STOP  # separated, past the separated floor


def _tridiagonal(diagonal, off):
    matrix = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
    for index, value in enumerate(off):
        matrix[index, index + 1] = matrix[index + 1, index] = value
    return matrix


@pytest.mark.parametrize(
    "projected, decision",
    [
        (_tridiagonal([-1.0, 0.5, 2.0], [0.0, 0.0]), Decision.STOP),  # resolved: 0.5 exactly
        (_tridiagonal([-1.0, 1e-5, 2.0], [0.0, 0.0]), Decision.STOP),  # below resolution
        (_tridiagonal([-1.0, 0.5, 2.0], [0.0, 0.3]), Decision.CONTINUE),  # not yet resolved
    ],
)
def test_min_abs_must_be_resolved_or_below_resolution(projected, decision):
    ends = Ends(top=True, bottom=True, min_abs=True)
    rule = StoppingRule(ends, tol=1e-3, max_iter=300, space=SPACE)
    for products in range(1, MIN_PRODUCTS):
        rule.assess(_check(products, [-1.0, 2.0], projected=projected, beta=0.1))
    assessment = rule.assess(_check(MIN_PRODUCTS, [-1.0, 2.0], projected=projected, beta=0.1))
    assert assessment.decision is decision
    assert assessment.min_abs == pytest.approx(float(torch.diag(projected)[1]), rel=0.2)
    resolved = assessment.min_abs_error <= 1e-3 * assessment.min_abs
    assert resolved == (projected[1, 2] == 0.0)
