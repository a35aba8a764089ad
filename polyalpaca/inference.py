"""Inference for a design with two crossed random units: training seeds and test prompts.

A contrast A - B is computed on the (seeds x prompts) matrix of paired differences
``d[s, p] = A[s, p] - B[s, p]``: recipe A and recipe B trained with seed ``s`` draw the same
training records (``polyalpaca.recipes``), and prompt ``p`` is the same question in every
language (its languages are averaged first, so a prompt is one unit). The untuned base model has
no seed: its single row is subtracted from every seed of the tuned model.

The model is ``d[s, p] = mu + a_s + b_p + e_sp`` with seed effects ``a``, prompt effects ``b`` and
a residual, all random. The grand mean's error splits into two independent parts:

- the **seed part** ``mean(a) + mean(e)``, whose variance ``MS_seed / (S P)`` is estimated from
  the S seed means with S - 1 degrees of freedom (two, with three seeds);
- the **prompt part** ``mean(b)``, bounded by ``MS_prompt / (S P)`` with P - 1 degrees of freedom.

Each part over its standard error follows Student's t with its own degrees of freedom (the
prompt part conservatively). Their sum is a Behrens-Fisher problem; the test uses Banerjee's
conservative solution: H0 ``mu <= theta`` is rejected at level alpha when ``mean - theta`` exceeds
``sqrt((t(1 - alpha, S - 1) se_seed)^2 + (t(1 - alpha, P - 1) se_prompt)^2)``, each part with the
quantile of its own degrees of freedom. It keeps its error rate at every level, in the far tail
that Holm's correction uses as well. (Pooling the parts into one t with Satterthwaite's estimated
degrees of freedom, or a percentile bootstrap, is accurate at 5% but gives false verdicts 2-4
times too often at the 0.1-1% levels a corrected family tests at: ``tests/test_inference.py``
measures both.) The p-value is the smallest alpha at which the test rejects.

No resampling is involved: the same data give the same p-values and verdicts, with no floor.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Effect:
    """The mean of paired differences and the standard errors of its seed and prompt parts."""

    mean: float
    se_seed: float
    se_prompt: float
    seeds: int
    prompts: int

    @property
    def tested(self) -> bool:
        return self.prompts > 1 and self.mean == self.mean

    @property
    def se(self) -> float:
        """The standard error of the mean (both parts together)."""
        return float(np.hypot(self.se_seed, self.se_prompt)) if self.tested else float("nan")

    def margin_of_error(self, alpha: float) -> float:
        """The distance beyond a threshold the mean must reach for a one-sided test at ``alpha``."""
        return float(critical_gap(np.array([alpha]), *self._parts())[0]) if self.tested else float("nan")

    def p_above(self, threshold: float) -> float:
        """One-sided p-value of H0: effect <= threshold (small when the effect is above it)."""
        return float(one_sided_p(np.array([self.mean - threshold]), *self._parts())[0]) if self.tested else float("nan")

    def p_below(self, threshold: float) -> float:
        """One-sided p-value of H0: effect >= threshold."""
        return float(one_sided_p(np.array([threshold - self.mean]), *self._parts())[0]) if self.tested else float("nan")

    def interval(self, alpha: float) -> tuple[float, float]:
        """The two-sided interval whose each side has error ``alpha`` (inverting the test)."""
        half = self.margin_of_error(alpha)
        return self.mean - half, self.mean + half

    def detectable(self, alpha: float, power: float = 0.8) -> float:
        """About the smallest true effect (beyond the tested threshold) a one-sided test at
        ``alpha`` detects with ``power``: the margin of error plus the ``power`` quantile of the
        estimate's error (t with the seeds' degrees of freedom). What this design could have seen."""
        if not self.tested:
            return float("nan")
        df = self.seeds - 1 if self.seeds > 1 else self.prompts - 1
        return self.margin_of_error(alpha) + float(stats.t.ppf(power, df)) * self.se

    def with_seeds(self, seeds: int) -> "Effect":
        """The same effect as a design with ``seeds`` seeds would estimate it: the seed part's
        standard error scales with one over the root of the seeds, the prompt part is kept (it
        shrinks a little with more seeds, so this errs on the side of less power)."""
        return Effect(self.mean, self.se_seed * float(np.sqrt(self.seeds / seeds)), self.se_prompt, seeds, self.prompts)

    def _parts(self):
        return test_parts([self])


def test_parts(effects: list[Effect]):
    """(se_seed, df_seed, se_prompt, df_prompt) arrays of ``effects``, as ``one_sided_p`` and
    ``critical_gap`` take them (a missing part counts as 0)."""
    return (np.nan_to_num(np.array([e.se_seed for e in effects], float)), np.array([max(e.seeds - 1, 1) for e in effects]),
            np.nan_to_num(np.array([e.se_prompt for e in effects], float)),
            np.array([max(e.prompts - 1, 1) for e in effects]))


def one_sided_p_values(effects: list[Effect], thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each effect, the p-values of H0: effect <= threshold and of H0: effect >= threshold,
    computed for all rows at once; NaN where the effect could not be tested."""
    tested = np.array([e.tested for e in effects])
    mean = np.array([e.mean for e in effects], float)
    parts = test_parts(effects)
    claim = np.where(tested, one_sided_p(np.nan_to_num(mean - thresholds), *parts), np.nan)
    opposite = np.where(tested, one_sided_p(np.nan_to_num(thresholds - mean), *parts), np.nan)
    return claim, opposite


UNTESTED = Effect(float("nan"), float("nan"), float("nan"), 0, 0)


def crossed_effect(d: np.ndarray) -> Effect:
    """The effect of a (seeds x prompts) matrix of paired differences (see the module's text).
    With one seed the seed part is unknown and left at 0: such a verdict is exploratory."""
    d = np.asarray(d, float)
    if d.ndim != 2 or d.size == 0:
        return UNTESTED
    s, p = d.shape
    mean = float(d.mean())
    if p < 2:
        return Effect(mean, float("nan"), float("nan"), s, p)
    ms_prompt = s * float(((d.mean(axis=0) - mean) ** 2).sum()) / (p - 1)
    ms_seed = p * float(((d.mean(axis=1) - mean) ** 2).sum()) / (s - 1) if s > 1 else 0.0
    return Effect(mean, float(np.sqrt(ms_seed / (s * p))), float(np.sqrt(ms_prompt / (s * p))), s, p)


def critical_gap(alpha, se_seed, df_seed, se_prompt, df_prompt):
    """``sqrt((t(1 - alpha, df_seed) se_seed)^2 + (t(1 - alpha, df_prompt) se_prompt)^2)`` (arrays)."""
    q = 1 - np.asarray(alpha, float)
    seed_part = np.where(se_seed > 0, stats.t.ppf(q, df_seed) * np.maximum(se_seed, 1e-300), 0.0)
    prompt_part = np.where(se_prompt > 0, stats.t.ppf(q, df_prompt) * np.maximum(se_prompt, 1e-300), 0.0)
    return np.hypot(seed_part, prompt_part)


def one_sided_p(gap, se_seed, df_seed, se_prompt, df_prompt, iterations: int = 60):
    """The smallest alpha at which ``gap`` (estimate minus threshold) exceeds the critical gap,
    for arrays of contrasts at once (bisection on log alpha; the critical gap falls as alpha
    grows). 1 where the gap is not positive."""
    gap = np.asarray(gap, float)
    lo, hi = np.full(gap.shape, np.log(1e-300)), np.zeros(gap.shape)  # log alpha: reject at hi, not at lo
    for _ in range(iterations):
        mid = (lo + hi) / 2
        rejects = gap > critical_gap(np.exp(mid), se_seed, df_seed, se_prompt, df_prompt)
        hi, lo = np.where(rejects, mid, hi), np.where(rejects, lo, mid)
    p = np.exp(hi)
    p[gap <= 0] = 1.0
    p[(se_seed == 0) & (se_prompt == 0) & (gap > 0)] = 0.0
    return p


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone), in input order; NaN stays NaN and is not
    counted in the family."""
    p = np.asarray(p_values, float)
    finite = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), np.nan)
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
