"""Model outputs -> Classification: decoding every reply layout TF Serving uses, rejecting the rest."""

from __future__ import annotations

import math

import pytest

from agent.classify import classify, first_output
from agent.errors import BadReplyError

LABELS = ("cat", "dog")


@pytest.mark.parametrize(
    ("reply", "output_name", "expected"),
    [
        pytest.param({"predictions": [[0.97]]}, None, [0.97], id="row-single-output"),
        pytest.param({"predictions": [0.97]}, None, [0.97], id="row-scalar-per-instance"),
        pytest.param({"predictions": [[0.1, 0.9]]}, None, [0.1, 0.9], id="row-softmax"),
        pytest.param({"predictions": [{"dense_1": [0.8], "logits": [1.4]}]}, "dense_1", [0.8], id="row-named"),
        pytest.param({"outputs": [[0.3]]}, None, [0.3], id="columnar-single"),
        pytest.param({"outputs": {"dense_1": [[0.3]], "logits": [[-0.8]]}}, "dense_1", [0.3], id="columnar-named"),
        pytest.param({"predictions": [{"dense_1": [0.6]}]}, None, [0.6], id="row-one-named-output"),
    ],
)
def test_first_output_decodes_row_and_columnar_replies(reply, output_name, expected):
    assert first_output(reply, output_name) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        pytest.param({"predictions": "x"}, "'predictions' is not a non-empty list", id="predictions-string"),
        pytest.param({"predictions": []}, "'predictions' is not a non-empty list", id="predictions-empty"),
        pytest.param({"result": [1]}, "neither 'predictions' nor 'outputs'", id="wrong-key"),
        pytest.param(["x"], "not a JSON object", id="top-level-list"),
        pytest.param({"predictions": [["a"]]}, "not a list of numbers", id="strings"),
        pytest.param({"predictions": [[True]]}, "not a list of numbers", id="bools"),
        pytest.param({"predictions": [{"a": [1], "b": [2]}]}, "several outputs (a, b); set model.output",
                     id="ambiguous-outputs"),
        pytest.param({"predictions": [{"a": [1]}]}, "lacks output 'dense_1'", id="missing-named-output"),
    ],
)
def test_first_output_rejects_malformed_replies_with_a_clear_reason(reply, message):
    name = "dense_1" if "missing-named" in message or "lacks" in message else None
    with pytest.raises(BadReplyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        first_output(reply, name)


def test_sigmoid_value_is_the_probability_of_the_second_label():
    result = classify([0.962], LABELS)
    assert result.label == "dog" and result.score == 0.962
    assert result.scores == {"cat": 0.038, "dog": 0.962}


def test_sigmoid_below_threshold_is_the_first_label_with_its_own_score():
    result = classify([0.2], LABELS)
    assert result.label == "cat" and result.score == 0.8


def test_threshold_moves_the_decision():
    assert classify([0.6], LABELS, threshold=0.7).label == "cat"
    assert classify([0.7], LABELS, threshold=0.7).label == "dog"


def test_softmax_picks_the_highest_score_among_several_labels():
    result = classify([0.1, 0.7, 0.2], ("cat", "dog", "other"))
    assert result.label == "dog" and result.score == 0.7 and set(result.scores) == {"cat", "dog", "other"}


def test_truncating_a_probability_is_not_how_labels_are_chosen():
    """The tutorial's int(predictions[0][0]) turns 0.97 into 0 (cat); we must say dog."""
    assert classify([0.97], LABELS).label == "dog"


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5, 1.7])
def test_non_probabilities_are_bad_replies_not_results(value):
    with pytest.raises(BadReplyError, match="not a probability"):
        classify([value], LABELS)


def test_output_count_that_fits_no_label_scheme_is_rejected():
    with pytest.raises(BadReplyError, match="model returned 3 values but model.labels has 2"):
        classify([0.1, 0.2, 0.7], LABELS)
