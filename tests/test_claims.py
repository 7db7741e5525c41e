"""The claims engine (isae.report.claims): one rule, five verdicts, each reachable and each checked."""

import math

import numpy as np
import pandas as pd
import pytest

from isae.report import claims
from isae.report.claims import AllOf, AnyOf, Claim, Compare


def q(mean, sd=0.01, n=3, level="run", key=None, label="q"):
    return claims.from_seeds(label, mean, sd, n, level, key)


def verdict(test, profile="default", movement=None):
    return claims.claims_table([Claim("P1", "c", "s", test)], profile, movement)["verdict"].iloc[0]


def test_a_clear_difference_holds_and_its_mirror_fails():
    assert verdict(Compare(q(0.9), ">", q(0.5))) == "holds"
    assert verdict(Compare(q(0.5), ">", q(0.9))) == "fails"
    assert verdict(Compare(q(0.5), "<", q(0.9))) == "holds"


def test_a_difference_inside_the_noise_is_inconclusive():
    # se of each mean 0.1/√3 ≈ 0.058, of the difference ≈ 0.082: a 0.1 gap is within 2 se
    assert verdict(Compare(q(0.6, sd=0.1), ">", q(0.5, sd=0.1))) == "inconclusive"
    assert verdict(Compare(q(0.5, sd=0.1), ">", q(0.6, sd=0.1))) == "inconclusive"
    # the same gap with a tenth of the spread is decided
    assert verdict(Compare(q(0.6, sd=0.01), ">", q(0.5, sd=0.01))) == "holds"


def test_the_boundary_is_twice_the_standard_error():
    se = 0.1 / math.sqrt(4)  # one side exact: the difference's se is the mean's
    just_in, just_out = 2 * se * 0.99, 2 * se * 1.01
    assert verdict(Compare(q(just_in, sd=0.1, n=4), ">", claims.exact("0", 0))) == "inconclusive"
    assert verdict(Compare(q(just_out, sd=0.1, n=4), ">", claims.exact("0", 0))) == "holds"


def test_fewer_than_three_seeds_decide_nothing():
    out = claims.claims_table([Claim("P1", "c", "s", Compare(q(0.9, n=2), ">", q(0.1, n=2)))], "default")
    assert out["verdict"].iloc[0] == "inconclusive" and "2 seeds" in out["reason"].iloc[0]


def test_a_missing_model_is_missing_never_fails():
    test = Compare(claims.missing("iSAE-ME DCS"), ">", q(0.9))
    out = claims.claims_table([Claim("P1", "c", "s", test)], "default")
    assert out["verdict"].iloc[0] == "missing" and "iSAE-ME DCS" in out["reason"].iloc[0]
    # in a conjunction whose other part fails decisively, still missing
    assert verdict(AllOf(Compare(q(0.1), ">", q(0.9)), test)) == "missing"
    # and at smoke, still missing (not "not tested": nothing to test)
    assert verdict(test, profile="smoke") == "missing"


def test_smoke_decides_no_claim():
    out = claims.claims_table([Claim("P1", "c", "s", Compare(q(0.9), ">", q(0.1)))], "smoke")
    assert out["verdict"].iloc[0] == "not tested" and out["reason"].iloc[0] == claims.SMOKE_REASON


def test_a_moving_metric_is_not_tested_only_when_the_movement_could_change_the_verdict():
    key = ("lm", "TopK", "dcs")
    close = Compare(q(0.60, sd=0.01, key=key), ">", q(0.55, sd=0.01))
    far = Compare(q(0.84, sd=0.01, key=key), ">", q(0.12, sd=0.01))
    moving = {key: 0.08}
    assert verdict(close, movement=moving) == "not tested"
    assert verdict(far, movement=moving) == "holds"  # a gap of 0.72 survives another rise of 0.08 either way
    out = claims.claims_table([Claim("P1", "c", "s", close)], "default", moving)
    assert "TopK dcs (+0.080)" in out["still_moving"].iloc[0]
    assert verdict(close) == "holds"  # the same numbers, settled


def test_what_counts_is_how_far_the_compared_difference_moved():
    ka, kb = ("lm", "AbsTopK", "dcs"), ("lm", "TopK", "dcs")
    close = Compare(q(0.60, sd=0.01, key=ka), ">", q(0.55, sd=0.01, key=kb))  # d = 0.05, 2 se ≈ 0.016
    assert verdict(close, movement={ka: 0.08, kb: 0.07}) == "holds"  # side by side: d moved 0.01, survives again
    assert verdict(close, movement={ka: 0.08}) == "not tested"  # one side alone: d moved 0.08
    assert verdict(close, movement={kb: -0.04}) == "not tested"  # b falling moves d by 0.04 too
    out = claims.claims_table([Claim("P1", "c", "s", close)], "default", {ka: 0.08, kb: 0.07})
    assert "survives its own movement (+0.01)" in out["reason"].iloc[0]
    # b's own change (0.07) was within its seed spread, so b is "settled"; it still counts in d's movement
    assert claims.claims_table([Claim("P1", "c", "s", close)], "default", {ka: 0.08},
                               settled={kb: 0.07})["verdict"].iloc[0] == "holds"
    assert verdict(close, movement={kb: 0.07}) == "not tested"  # b moving, a with no change known: d moved -0.07
    tie = Compare(q(0.550, sd=0.05, key=ka), ">", q(0.545, sd=0.05, key=kb))  # d = 0.005, 2 se ≈ 0.08
    assert verdict(tie, movement={ka: 0.04, kb: 0.03}) == "inconclusive"  # 0.005 + 0.01 cannot reach 2 se
    out = claims.claims_table([Claim("P1", "c", "s", tie)], "default", {ka: 0.04, kb: 0.03})
    assert "its own movement (+0.01) again could not decide it" in out["reason"].iloc[0]
    assert verdict(tie, movement={ka: 0.09}) == "not tested"  # 0.005 + 0.09 could


def test_all_of_is_decided_by_its_weakest_part_and_any_of_by_its_strongest():
    good, bad, tie = Compare(q(0.9), ">", q(0.1)), Compare(q(0.1), ">", q(0.9)), Compare(q(0.5, 0.2), ">", q(0.5, 0.2))
    assert verdict(AllOf(good, good)) == "holds"
    assert verdict(AllOf(good, tie)) == "inconclusive"
    assert verdict(AllOf(good, tie, bad)) == "fails"
    assert verdict(AnyOf(bad, tie)) == "inconclusive"
    assert verdict(AnyOf(bad, good)) == "holds"
    assert verdict(AnyOf(bad, bad)) == "fails"


def test_pair_metrics_pay_for_the_shared_seeds():
    run, pair = claims.from_seeds("r", 0.5, 0.1, 4, "run"), claims.from_seeds("p", 0.5, 0.1, 4, "pair")
    assert run.se == pytest.approx(0.1 / 2) and pair.se == pytest.approx(0.1 * math.sqrt(2 / 4))


def test_the_pair_standard_error_bounds_the_spread_of_the_pair_mean():
    # Independent computation: simulate seeds with a per-seed effect, average every pair's metric, and compare
    # the spread of that average across repetitions with the rule's se (which must not be smaller).
    rng = np.random.default_rng(0)
    n, reps, means, ses = 5, 4000, [], []
    for _ in range(reps):
        a = rng.normal(size=n)
        pairs = [a[i] + a[j] + rng.normal() for i in range(n) for j in range(i + 1, n)]
        means.append(np.mean(pairs))
        ses.append(claims.from_seeds("p", np.mean(pairs), np.std(pairs, ddof=1), n, "pair").se)
    assert np.mean(ses) >= 0.9 * np.std(means)


def test_the_paper_verdict_compares_the_papers_means():
    paper = Compare(claims.exact("P1 AbsTopK DCS", 0.935), ">", claims.exact("P1 TopK DCS", 0.606))
    out = claims.claims_table([Claim("P1", "c", "s", Compare(q(0.6), ">", q(0.6)), str(paper), paper)], "default")
    assert out["paper_verdict"].iloc[0] == "holds" and out["verdict"].iloc[0] == "inconclusive"
    assert "0.935" in out["paper_value"].iloc[0]


def test_every_claims_table_has_the_same_columns_and_only_known_verdicts():
    out = claims.claims_table([Claim("P1", "a", "s", Compare(q(0.9), ">", q(0.1))),
                               Claim("P2", "b", "s", Compare(claims.missing("x"), ">", q(0.1)))], "default")
    assert tuple(out.columns) == claims.CLAIM_COLUMNS
    assert set(out["verdict"]) <= set(claims.VERDICTS)
    assert tuple(claims.claims_table([], "default").columns) == claims.CLAIM_COLUMNS
    assert claims.counts(out) == {"holds": 1, "fails": 0, "inconclusive": 0, "not tested": 0, "missing": 1}


def test_an_unconverged_claim_is_not_tested():
    c = Claim("P3", "c", "s", Compare(claims.exact("a", 1.0), ">", claims.exact("b", 0.0)), unconverged="cap hit")
    out = claims.claims_table([c], "default")
    assert out["verdict"].iloc[0] == "not tested" and "cap hit" in out["reason"].iloc[0]


def test_a_fraction_is_a_sign_test():
    assert verdict(Compare(claims.fraction("share", 4, 4), ">", claims.exact("half", 0.5))) == "inconclusive"
    assert verdict(Compare(claims.fraction("share", 28, 30), ">", claims.exact("half", 0.5))) == "holds"


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="relation"):
        Compare(q(1), ">=", q(0))
    with pytest.raises(ValueError, match="level"):
        claims.from_seeds("x", 1, 0.1, 3, "seed")


def test_from_values_is_mean_and_standard_error():
    v = claims.from_values("x", [1.0, 2.0, 3.0])
    assert v.mean == 2.0 and v.se == pytest.approx(pd.Series([1.0, 2.0, 3.0]).std() / math.sqrt(3)) and v.n == 3


def test_the_digest_counts_decided_claims_and_lists_each_under_its_verdict():
    table = claims.claims_table([
        Claim("P1", "A beats B", "lm", Compare(q(0.9, key=("lm", "A", "dcs")), ">", q(0.1)), paper_value="0.8 > 0.7"),
        Claim("P1", "B beats A", "lm", Compare(q(0.1), ">", q(0.9))),
        Claim("P1", "A equals B", "vision", Compare(q(0.5, sd=0.2), ">", q(0.49, sd=0.2))),
        Claim("P1", "A beats C", "lm", Compare(q(0.9), ">", claims.missing("C")))], "default",
        movement={("lm", "A", "dcs"): 5.0})
    text = claims.digest_markdown(table, "default")
    assert text.startswith("**2 of 4 claims decided**")  # fails and inconclusive; not tested and missing are not
    assert "**Fails** (1):" in text and "**Holds**" not in text
    assert "* lm: A beats B. Ours:" in text and "P1: 0.8 > 0.7" in text  # under "not tested", with the paper's value
    assert text.index("**Not tested**") < text.index("A beats B") and "**Missing** (1):" in text
