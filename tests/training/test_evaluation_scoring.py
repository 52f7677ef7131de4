"""Agreement with a reference: math exactly after normalisation, text by SQuAD token F1; percentiles."""

import pytest

from training.evaluation_scoring import agreement, histogram, normalise_math, percentile, token_f1


@pytest.mark.parametrize(("answer", "reference"), [
    ("42", "42.0"), ("2.50", "2.5"), (" 1 / 2 ", "0.5"), ("\\frac{1}{2}", "0.5"), ("$\\frac{3}{4}$", "0.75"),
    ("x ^ {2}", "x^2"), ("X^2", "x^2"), ("The answer is $\\boxed{7}$", "7"), ("1,000", "1000"),
    ("Let me work it out.\n$$12$$", "12"), ("\\dfrac{6}{4}", "1.5"), ("3.0e2", "300"),
])
def test_math_answers_that_agree(answer, reference):
    assert agreement(answer, reference) == (1.0, "exact")


@pytest.mark.parametrize(("answer", "reference"), [("41", "42"), ("x^3", "x^2"), ("1/3", "0.33"), ("", "5")])
def test_math_answers_that_do_not(answer, reference):
    assert agreement(answer, reference) == (0.0, "exact")


def test_normalisation_spells_one_way():
    assert normalise_math("  \\frac{1}{2} ") == normalise_math("1/2") == "1/2"
    assert normalise_math("10.500") == "10.5"


def test_text_gets_token_f1():
    assert token_f1("The Eiffel Tower!", "eiffel tower") == 1.0
    assert token_f1("Paris is the capital", "Paris") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert token_f1("nothing", "Paris") == 0.0
    assert agreement("Paris, France", "Paris") == (pytest.approx(2 / 3), "f1")


def test_no_reference_no_agreement():
    assert agreement("anything", "") == (None, "")
    assert agreement("anything", None) == (None, "")


def test_percentiles_and_histogram():
    assert percentile([], 0.5) is None
    assert percentile([5, 1, 3, 2, 4], 0.5) == 3
    assert percentile(list(range(1, 101)), 0.95) == 95
    buckets = histogram([0.0, 0.05, 0.5, 0.99, 1.0])
    assert [b["count"] for b in buckets] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert buckets[0] == {"from": 0.0, "to": 0.1, "count": 2}
