import numpy as np
import pytest

from oirl_fast.query_features import FEATURE_NAMES, query_features


def col(name):
    return FEATURE_NAMES.index(name)


def test_shape_dtype_and_empty_batch():
    X = query_features(["How many?", "Tom has 3 apples. He eats 1. How many are left?"])
    assert X.shape == (2, len(FEATURE_NAMES)) and X.dtype == np.float32
    assert query_features([]).shape == (0, len(FEATURE_NAMES))


def test_counts_numbers_sentences_and_cues():
    text = "It costs $1,200.50 or 3/4 of 10%. Each box weighs 2.5 kg and half of them are left!"
    row = query_features([text])[0]
    assert row[col("n_numbers")] == 4  # 1,200.50  3/4  10  2.5
    assert row[col("n_decimals")] == 3  # 1,200.50  3/4  2.5
    assert row[col("n_sentences")] == 2  # the decimal points do not end sentences
    assert row[col("max_log10_number")] == pytest.approx(np.log10(1201.5), rel=1e-6)
    assert row[col("n_percent")] == 1 and row[col("n_money")] == 1
    assert row[col("n_number_words")] == 1  # half
    assert row[col("n_operation_cues")] == 2  # each, left


def test_rows_do_not_depend_on_the_batch():
    a, b = "Sam has 12 eggs and buys 2 dozen more.", "A train travels 60 miles per hour for 3 hours."
    both = query_features([a, b])
    np.testing.assert_array_equal(both[0], query_features([a])[0])
    np.testing.assert_array_equal(both[1], query_features([b])[0])
    np.testing.assert_array_equal(both, query_features([a, b]))


def test_rejects_non_text():
    with pytest.raises(TypeError, match="text #1"):
        query_features(["fine", 3])
