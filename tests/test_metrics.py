import math

import pytest

from benchmark.records import metrics as M

# rows: zero-shot, after task 1, 2, 3; columns: tasks 1..3
R = [
    [10.0, 20.0, 30.0],
    [80.0, 25.0, 35.0],
    [60.0, 90.0, 40.0],
    [70.0, 50.0, 85.0],
]


def test_average_accuracy_is_macro_mean_of_last_row():
    assert M.average_accuracy(R) == pytest.approx((70 + 50 + 85) / 3)


def test_learning_accuracy_is_mean_of_diagonal():
    assert M.learning_accuracy(R) == pytest.approx((80 + 90 + 85) / 3)


def test_backward_transfer_hand_computed():
    # (70 - 80) + (50 - 90) over T-1 = 2
    assert M.backward_transfer(R) == pytest.approx(-25.0)


def test_forgetting_uses_max_over_earlier_rows_and_bounds_bwt():
    # task 1: max(80, 60) - 70 = 10 ; task 2: max(90) - 50 = 40
    assert M.forgetting(R) == pytest.approx(25.0)
    R2 = [[0, 0, 0], [50, 0, 0], [40, 60, 0], [45, 60, 70]]  # task 1 dips then recovers
    # BWT = ((45-50)+(60-60))/2 = -2.5 ; F = ((50-45)+(60-60))/2 = 2.5
    assert M.backward_transfer(R2) == pytest.approx(-2.5)
    assert M.forgetting(R2) == pytest.approx(2.5)
    R3 = [[0, 0, 0], [50, 0, 0], [30, 60, 0], [45, 60, 70]]  # score rises after a drop: F > -BWT
    assert M.forgetting(R3) == pytest.approx(((50 - 45) + 0) / 2)
    assert M.forgetting(R3) >= -M.backward_transfer(R3)


def test_forward_transfer_against_zero_shot_and_against_references():
    # GEM form: R[1,1]-R[0,1] = 25-20, R[2,2]-R[0,2] = 40-30
    assert M.forward_transfer(R) == pytest.approx((5 + 10) / 2)
    # single-task reference form: mean(R[i+1,i] - ref_i)
    assert M.forward_transfer(R, [75, 95, 80]) == pytest.approx(((80 - 75) + (90 - 95) + (85 - 80)) / 3)


def test_average_incremental_accuracy():
    expect = (80 / 1 + (60 + 90) / 2 + (70 + 50 + 85) / 3) / 3
    assert M.average_incremental_accuracy(R) == pytest.approx(expect)


def test_single_stage_matrix_defines_only_final_metrics():
    mtl = [[10.0, 20.0], [70.0, 80.0]]
    m = M.all_metrics(mtl)
    assert m["aa"] == pytest.approx(75.0)
    assert m["bwt"] is None and m["forgetting"] is None and m["fwt"] is None


def test_general_retention_relative_change():
    g = M.general_retention(10.0, 12.5)
    assert g["ppl_rel_change"] == pytest.approx(0.25)
    assert M.general_retention(None, 3.0)["ppl_rel_change"] is None
    assert M.general_retention(float("nan"), 3.0)["ppl_rel_change"] is None


def test_matches_avalanche_forgetting_and_bwt():
    """Avalanche's Forgetting is (accuracy right after learning - current accuracy) per experience, and its
    BWT is the negative of that; averaged over all but the last experience they equal our -BWT / BWT."""
    from avalanche.evaluation.metrics.forgetting_bwt import BWT, Forgetting

    f, b = Forgetting(), BWT()
    T = len(R[0])
    for i in range(T):  # after training task i, its accuracy is the "initial" value
        f.update(i, R[i + 1][i] / 100, initial=True)
        b.update(i, R[i + 1][i] / 100, initial=True)
    for i in range(T):
        f.update(i, R[T][i] / 100)
        b.update(i, R[T][i] / 100)
    fr, br = f.result(), b.result()
    ava_forgetting = 100 * sum(fr[i] for i in range(T - 1)) / (T - 1)
    ava_bwt = 100 * sum(br[i] for i in range(T - 1)) / (T - 1)
    assert ava_bwt == pytest.approx(M.backward_transfer(R))
    assert ava_forgetting == pytest.approx(-M.backward_transfer(R))
    assert math.isclose(fr[T - 1], 0.0, abs_tol=1e-12)
