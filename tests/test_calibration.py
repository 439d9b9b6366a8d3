import json

import numpy as np
import pytest

from oirl_fast.calibration import IsotonicCalibrator, expected_calibration_error, reliability_bins


def test_ece_hand_computed():
    # bin [0.1, 0.2): predicts 0.1 for two rows, one positive -> gap 0.4, share 0.5
    # bin [0.9, 1.0]: predicts 0.9 for two rows, both positive -> gap 0.1, share 0.5
    y = np.array([0, 1, 1, 1])
    p = np.array([0.1, 0.1, 0.9, 0.9])
    assert expected_calibration_error(y, p) == pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    b = reliability_bins(y, p)
    assert b["count"][1] == 2 and b["observed"][1] == pytest.approx(0.5)


def test_isotonic_is_monotone_fixes_overconfidence_and_roundtrips():
    rng = np.random.default_rng(0)
    p = rng.random(5000)
    y = (rng.random(5000) < 0.5 * p + 0.25).astype(float)  # the model is overconfident
    cal = IsotonicCalibrator.fit(p, y)
    grid = np.linspace(0, 1, 101)
    out = cal(grid)
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1
    assert expected_calibration_error(y, cal(p)) < expected_calibration_error(y, p) / 3
    back = IsotonicCalibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(back(grid), out)
    assert IsotonicCalibrator.from_dict(None) is None
