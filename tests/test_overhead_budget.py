from types import SimpleNamespace

import pytest
from helpers.fake_trainer import FakeTrainer, clocked, run_fit
from lightning.pytorch.trainer.states import TrainerFn

from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.callbacks._budget import OverheadBudget


class Ticks:
    """A clock that returns the values it is given, one per call."""

    def __init__(self, *times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


def test_books_time_to_training_and_measurements():
    budget = OverheadBudget(clock=Ticks(0.0, 10.0, 12.0, 30.0))
    trainer = SimpleNamespace(world_size=1)
    budget.start()  # 0
    with budget.measuring():  # 10 s of training, then a measurement of 2 s
        pass
    assert (budget.train_seconds, budget.monitor_seconds, budget.last_cost) == (10.0, 2.0, 2.0)
    # at 30 s: 28 s of training; 2 + 2 <= 0.15 * 28 but not <= 0.1 * 28
    assert budget.allows(0.15, trainer)
    assert not OverheadBudget(clock=Ticks(1.0)).allows(0, trainer)  # reads no clock
    assert OverheadBudget(clock=Ticks()).allows(None, trainer)


def test_the_next_measurement_is_estimated_by_its_kind():
    """A cold measurement costs several warm ones: a warm measurement after a cold one is not
    estimated at the cold cost (the next one would wait twice as long), and an audit after warm
    ones is not estimated at the warm cost (it would overrun the budget)."""
    # training 0-100, cold 100-104, training 104-120, warm 120-121, then the decisions at 150
    budget = OverheadBudget(clock=Ticks(0.0, 100.0, 104.0, 120.0, 121.0, 150.0, 150.0, 150.0))
    trainer = SimpleNamespace(world_size=1)
    budget.start()
    with budget.measuring("cold"):
        pass
    with budget.measuring("warm"):
        pass
    assert budget.costs == {"cold": 4.0, "warm": 1.0} and budget.last_cost == 1.0
    assert budget.estimate("cold") == 4.0 and budget.estimate("warm") == 1.0
    assert budget.estimate("other") == budget.estimate() == 1.0  # unknown kind: the last cost
    # 146 s of training, 5 s measured: a warm one fits within 4.5% (5 + 1 <= 6.57), an audit not
    assert budget.allows(0.045, trainer, "warm")
    assert not budget.allows(0.045, trainer, "cold")
    restored = OverheadBudget()
    restored.load_state_dict(budget.state_dict())
    assert restored.state_dict() == budget.state_dict()


def test_time_left_over_is_spread_over_the_run_not_spent_in_a_burst():
    """After 100 s of training and one 1 s measurement, 5% leaves room for four more at once; the
    next waits until the training since the last one pays for it (20 s at 5%)."""
    budget = OverheadBudget(clock=Ticks(0.0, 100.0, 101.0, 111.0, 122.0))
    trainer = SimpleNamespace(world_size=1)
    budget.start()
    with budget.measuring():
        pass
    assert budget.monitor_seconds + 4 * budget.estimate() <= 0.05 * 110.0
    assert not budget.allows(0.05, trainer)  # 10 s of training since the last: not yet
    assert budget.allows(0.05, trainer)  # 21 s


def test_a_checkpoint_of_the_flat_state_loads():
    state = {
        "history": [{"step": 0, "epoch": 0, "stage": "fit", "max_eigenvalue": 1.0}],
        "last_step": 0,
        "train_seconds": 4.0,
        "monitor_seconds": 0.5,
        "last_cost": 0.5,
    }
    monitor = HessianEigenvalueMonitor()
    monitor.load_state_dict(state)
    saved = monitor.state_dict()
    assert {key: saved[key] for key in state} == state
    # a checkpoint from before warm tracking: the trackers start cold
    fresh = {"warm_in_a_row": 0, "cold_for": 0, "backoff": 0}
    assert saved["tracker"] == saved["stability_tracker"] == fresh
    assert monitor.budget.train_seconds == 4.0 and monitor.history == state["history"]


def _cost_report(budget, run_steps):
    """What the cost report says after 2 s at the initial point and 10 training steps of 1 s, each
    measurement costing 2 s, in a run of ``run_steps``."""
    from lightning_shortcut.callbacks._cost_report import CostReport

    report = CostReport(Ticks(0.0, 10.0))
    trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=run_steps)
    report.start(trainer, monitor_seconds=2.0)
    trainer.global_step = 10
    return report.message(
        trainer,
        2.0,
        2.0,
        name="Monitor",
        what="",
        levers="tol",
        budget=budget,
        every_n_steps=None,
        every_n_epochs=None,
    )


def test_the_cost_report_says_what_the_budget_plan_gives():
    """2 s at the initial point, then 10 steps of 1 s, in a run of 100 steps: 5% of it leaves 3 s
    for more measurements of 2 s, one about every 67 steps; at 1% the initial point used it all."""
    assert "about every 67 steps (about 2 in all of this run's 100 steps)" in _cost_report(
        0.05, 100
    )
    assert (
        "measures no more: the measurement at the initial point used this run's budget"
        in _cost_report(0.01, 100)
    )
    # a run of unknown length: the interval at 5% of the training so far, no count
    message = _cost_report(0.05, float("inf"))
    assert "about every 40 steps." in message and "inf" not in message


def test_a_run_whose_length_the_trainer_cannot_estimate_is_budgeted_so_far():
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lightning_shortcut.callbacks._budget import run_length

    class Scheduled:
        """A Trainer whose gradient accumulation changes between epochs."""

        global_step = 10

        @property
        def estimated_stepping_batches(self):
            raise MisconfigurationException("accumulate_grad_batches differs between epochs")

    assert run_length(Scheduled()) == float("inf")
    assert run_length(SimpleNamespace(estimated_stepping_batches=-1)) == float("inf")
    assert OverheadBudget().projected_train_seconds(Scheduled()) is None


def test_the_initial_grant_is_what_was_measured_before_the_first_decision():
    """On a real clock a sliver of time is booked to training between the preparation and the
    measurement at the initial point; the grant is everything measured before the first decision."""
    budget = OverheadBudget(clock=Ticks(0.0, 0.5, 0.501, 2.5, 12.5, 24.5))
    trainer = SimpleNamespace(world_size=1, global_step=10, estimated_stepping_batches=100)
    budget.start()
    budget.book(monitor=True)  # preparing: 0.5 s
    with budget.measuring("cold"):  # 0.001 s of "training", then the measurement: 1.999 s
        pass
    # at 12.5: 10 s of training, the run projected at 100 s: 2.5 s granted, 2.5 s more accrue
    assert not budget.allows(0.05, trainer, "cold")
    assert budget.initial_seconds == pytest.approx(2.499)
    projected = 10.001 * 100 / 10
    assert budget.allowance(0.05, trainer) == pytest.approx(
        2.499 + (0.05 - 2.499 / projected) * 10.001
    )


@pytest.mark.parametrize("warm_start, light", [(True, "warm"), (False, "values")])
def test_a_light_measurement_not_yet_made_is_expected_at_the_costly_one_without_its_stderr(
    warm_start, light
):
    """Warm ones under warm_start; else those off the standard errors' schedule."""
    monitor = HessianEigenvalueMonitor(warm_start=warm_start)
    monitor.budget.last_cost, monitor.budget.costs = 2.0, {"cold": 2.0}
    monitor._guard.stderr_share = 0.25  # of the cold measurement just made
    monitor._guard.seed_estimates(monitor.budget)
    assert monitor.budget.estimate(light) == 1.5
    monitor.budget.costs[light] = 0.2  # once made, its own cost
    monitor._guard.seed_estimates(monitor.budget)
    assert monitor.budget.estimate(light) == 0.2


def test_the_spectrum_says_what_its_stderr_cost():
    from helpers.models import classification_data, mlp

    from lightning_shortcut.hessian import hessian_eigenvalues

    model = mlp().double()
    batch = classification_data((4,), num_samples=32)
    with_stderr = hessian_eigenvalues(model, batch, stderr=True)
    assert 0 < with_stderr.stderr_seconds < with_stderr.seconds
    assert hessian_eigenvalues(model, batch).stderr_seconds == 0.0


# The schedule under the budget, on a fake Trainer loop and a fake clock: an optimizer step takes
# 1 s and a measurement the given cost (the fit's hooks in Lightning's order, no model).


def test_default_schedule_measures_as_often_as_the_budget_allows():
    trainer = FakeTrainer(steps_per_epoch=6, max_epochs=10)
    monitor = clocked(trainer, 0.5)
    assert monitor.self_scheduling and monitor.overhead_budget == 0.05
    run_fit(monitor, trainer)
    # a measurement costs 0.5 s and the run is 60 s: 5% of it is 3 s; the initial measurement's
    # 0.5 s is granted at once, the other 2.5 s accrue evenly (1/24 s per step), so the next one
    # fits every 12 steps: the points spread over the run and the total is 5% at its end
    assert [r["step"] for r in monitor.history] == [0, 12, 24, 36, 48, 60]
    assert monitor.budget.monitor_seconds == pytest.approx(3.0)
    assert monitor.budget.train_seconds == pytest.approx(60.0)


def test_a_run_of_unknown_length_keeps_within_budget_so_far():
    """Without ``max_steps`` or ``max_epochs`` the allowance is 5% of the training time so far: the
    next measurement is due once it covers the time measured plus 0.5 s (step 20: 0.5 + 0.5 <= 1.0;
    step 30: 1.0 + 0.5 <= 1.5; ...)."""
    trainer = FakeTrainer(steps_per_epoch=6)
    monitor = clocked(trainer, 0.5)
    run_fit(monitor, trainer, stop_at=60)
    assert [r["step"] for r in monitor.history] == [0, 20, 30, 40, 50, 60]


def test_costlier_measurements_are_fewer():
    trainer = FakeTrainer(steps_per_epoch=6, max_epochs=5)
    monitor = clocked(trainer, 2.0, max_overhead=0.2)
    run_fit(monitor, trainer)
    assert [r["step"] for r in monitor.history] == [0, 15, 30]
    trainer = FakeTrainer(steps_per_epoch=6, max_epochs=2)
    monitor = clocked(trainer, 0.5, max_overhead=0)
    run_fit(monitor, trainer)
    assert [r["step"] for r in monitor.history] == [0]


def test_budget_cuts_a_fixed_schedule_only_when_asked():
    trainer = FakeTrainer(steps_per_epoch=6, max_epochs=2)
    fixed = clocked(trainer, 5.0, every_n_steps=2)
    assert fixed.overhead_budget is None
    run_fit(fixed, trainer)
    assert [r["step"] for r in fixed.history] == [0, 2, 4, 6, 8, 10, 12]
    trainer = FakeTrainer(steps_per_epoch=6, max_epochs=2)
    capped = clocked(trainer, 0.5, every_n_steps=2, max_overhead=0.25)
    run_fit(capped, trainer)
    # 0.5 + 0.5 <= 0.25 * 4; then every 2 steps 0.5 more is allowed
    assert [r["step"] for r in capped.history] == [0, 4, 6, 8, 10, 12]


def test_resume_keeps_the_time_budget():
    """The same run stopped after two epochs (its plan is the whole run's), its state saved and
    loaded into a new monitor, then resumed: the same steps as without the interruption."""
    trainer = FakeTrainer(steps_per_epoch=6, max_epochs=5)
    full = clocked(trainer, 0.5, max_overhead=0.1)
    run_fit(full, trainer)
    assert [r["step"] for r in full.history] == [0, 6, 12, 18, 24, 30]
    trainer = FakeTrainer(steps_per_epoch=6, max_epochs=5)
    first = clocked(trainer, 0.5, max_overhead=0.1)
    run_fit(first, trainer, stop_at=12)
    assert [r["step"] for r in first.history] == [0, 6, 12]
    state = first.state_dict()
    trainer = FakeTrainer(steps_per_epoch=6, max_epochs=5, global_step=12, current_epoch=2)
    resumed = clocked(trainer, 0.5, max_overhead=0.1)
    resumed.load_state_dict(state)
    run_fit(resumed, trainer)
    assert [r["step"] for r in resumed.history] == [r["step"] for r in full.history]
    assert resumed.budget.train_seconds == pytest.approx(full.budget.train_seconds)


def test_sanity_checking_and_fast_dev_run_measure_nothing():
    """Lightning's skips: every hook that measures does nothing while the Trainer sanity-checks or
    in ``fast_dev_run`` (a fit whose hooks are called so would measure at every step)."""
    for skip in ({"sanity_checking": True}, {"fast_dev_run": 2}):
        trainer = FakeTrainer(steps_per_epoch=3, max_epochs=1, **skip)
        monitor = clocked(trainer, 0.5, every_n_steps=1, every_n_epochs=1, stages=("fit", "test"))
        run_fit(monitor, trainer)
        trainer.state.fn = TrainerFn.TESTING
        monitor.on_test_start(trainer, None)
        assert monitor.history == [], skip
    trainer = FakeTrainer(steps_per_epoch=3, max_epochs=1)
    monitor = clocked(trainer, 0.5, every_n_steps=1, every_n_epochs=1, stages=("fit", "test"))
    run_fit(monitor, trainer)
    trainer.state.fn = TrainerFn.TESTING
    monitor.on_test_start(trainer, None)
    assert [(r["step"], r["stage"]) for r in monitor.history] == [
        (0, "fit"),
        (1, "fit"),
        (2, "fit"),
        (3, "fit"),
        (3, "test"),
    ]
