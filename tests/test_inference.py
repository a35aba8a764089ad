"""The crossed seeds x prompts test: error rates at the levels a corrected family uses, measured by
simulation, against the normal-theory alternatives it replaced."""
import numpy as np
import pytest
from scipy import stats

from polyalpaca.inference import crossed_effect, holm, one_sided_p

S, P = 3, 30
# (seed sd, prompt sd, residual sd) of the paired differences: seed-heavy, balanced, prompt-heavy
SPREADS = [(4.0, 1.4, 1.4), (1.0, 1.0, 3.0), (0.3, 3.0, 1.0)]


def _null(spread, n, rng):
    sa, sb, se = spread
    return rng.normal(0, sa, (n, S, 1)) + rng.normal(0, sb, (n, 1, P)) + rng.normal(0, se, (n, S, P))


def _crossed_p(d):
    """``crossed_effect(...).p_above(0)`` for a stack of matrices at once (same arithmetic)."""
    m = d.mean(axis=(1, 2))
    se_seed = np.sqrt(P * ((d.mean(axis=2) - m[:, None]) ** 2).sum(axis=1) / (S - 1) / (S * P))
    se_prompt = np.sqrt(S * ((d.mean(axis=1) - m[:, None]) ** 2).sum(axis=1) / (P - 1) / (S * P))
    return one_sided_p(m, se_seed, np.full(len(m), S - 1), se_prompt, np.full(len(m), P - 1), iterations=40)


def test_vectorised_p_values_are_the_effects_own():
    d = _null(SPREADS[1], 5, np.random.default_rng(3))
    assert _crossed_p(d) == pytest.approx([crossed_effect(x).p_above(0) for x in d], rel=1e-6)


@pytest.mark.parametrize("spread", SPREADS)
def test_false_rejections_stay_under_alpha_in_the_far_tail(spread):
    """At alpha = 0.05 and at 0.0025 (about a Holm family of 20 tests), with three seeds."""
    p = _crossed_p(_null(spread, 40000, np.random.default_rng(1)))
    for alpha in (0.05, 0.0025):
        rate = float((p < alpha).mean())
        print(f"spread {spread}: alpha {alpha}: false rejections {rate:.4f}")
        assert rate <= alpha * 1.25  # Monte Carlo allowance (100 expected events at 0.0025)


def test_the_pooled_satterthwaite_t_it_replaced_is_too_liberal_in_the_tail():
    """The reason for the two-part test: one t with estimated degrees of freedom rejects a true
    null several times too often at the levels a corrected family tests at."""
    d = _null(SPREADS[0], 40000, np.random.default_rng(2))
    m = d.mean(axis=(1, 2))
    ms_s = P * ((d.mean(axis=2) - m[:, None]) ** 2).sum(axis=1) / (S - 1)
    ms_p = S * ((d.mean(axis=1) - m[:, None]) ** 2).sum(axis=1) / (P - 1)
    df = (ms_s + ms_p) ** 2 / (ms_s ** 2 / (S - 1) + ms_p ** 2 / (P - 1))
    p = stats.t.sf(m / np.sqrt((ms_s + ms_p) / (S * P)), df)
    assert float((p < 0.0025).mean()) > 2 * 0.0025


def test_seed_variance_widens_the_interval_and_one_seed_has_no_seed_part():
    rng = np.random.default_rng(0)
    calm = crossed_effect(1 + rng.normal(0, 0.1, (3, 30)))
    shaky = crossed_effect(1 + rng.normal(0, 1.0, (3, 1)) + rng.normal(0, 0.1, (3, 30)))
    assert shaky.se_seed > 5 * calm.se_seed
    lo, hi = calm.interval(0.025)
    assert lo < 1 < hi and calm.p_above(0) < 1e-3  # t with 2 df: heavy tails even at 85 se
    single = crossed_effect(rng.normal(0, 1, (1, 30)))
    assert single.se_seed == 0 and single.tested


def test_holm_adjustment_and_nan():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm([0.01, float("nan"), 0.02])
    assert out[0] == pytest.approx(0.02) and out[1] != out[1] and out[2] == pytest.approx(0.02)
