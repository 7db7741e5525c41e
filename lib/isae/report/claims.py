"""The one claims engine: every verdict of every notebook, by one rule, with its uncertainty.

A claim is a statement of a paper (P1, P2, P3) tested by comparisons of quantities: ``Compare(a, ">", b)``,
combined with ``AllOf`` / ``AnyOf``. Each quantity carries its mean, its standard error and the number of seeds
behind it. ``claims_table`` turns claims into a table whose columns are the same for every notebook
(``CLAIM_COLUMNS``), with a verdict from ``VERDICTS``:

* **holds** / **fails**: the difference lies beyond ``Z`` standard errors on the claim's side / the other side;
* **inconclusive**: the difference is within ``Z`` standard errors, or fewer than ``MIN_SEEDS`` seeds stand
  behind a quantity (the run cannot resolve it);
* **not tested**: the profile is ``smoke`` (CI sizes decide nothing), or a compared metric is still moving at this
  budget and the difference's own movement, once more, could change the verdict, or a number measured once after
  training follows a comparison that is not tested for that reason (``Follows``);
* **missing**: a model or metric the claim needs is absent — never "fails".

The rule (our choice; ``RULE`` is written into every claims table): the standard error of a difference of two
independent means is √(se_a² + se_b²); a per-run metric's se is sd/√n over its n seeds; a per-seed-pair metric's
(DCS, IoU) is sd_pairs·√(2/n) over the pairs of n seeds, because pairs share seeds: the mean over all pairs of n
seeds is at most as precise as n/2 independent pairs (Hoeffding: ζ₁ ≤ ζ₂/2). A fixed threshold or a paper's
number has no error (and no seed count). The paper's own numbers, which come without a spread, are judged on
their means (``paper_verdict``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

Z = 2.0
"""A difference decides a claim when it exceeds Z standard errors (our choice)."""
MIN_SEEDS = 3
"""Fewer seeds than this behind a quantity cannot decide a claim (our choice)."""
HOLDS, FAILS, INCONCLUSIVE, NOT_TESTED, MISSING = "holds", "fails", "inconclusive", "not tested", "missing"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_TESTED, MISSING)
RULE = (f"decided when the difference exceeds {Z:g} standard errors (se from seeds; seed-pair metrics: "
        f"sd·√(2/n seeds)); fewer than {MIN_SEEDS} seeds: inconclusive; smoke or still moving: not tested; "
        "absent: missing")
SMOKE_REASON = "smoke sizes are for CI and decide no claim"
CLAIM_COLUMNS = ("paper", "claim", "setting", "verdict", "reason", "ours", "difference", "difference_se", "n",
                 "paper_value", "paper_verdict", "still_moving", "rule", "profile")
"""The columns of every claims table, in order."""


@dataclass(frozen=True)
class Quantity:
    """A number a claim compares: ``mean`` ± ``se`` (standard error) over ``n`` seeds; ``n`` None for an exact
    number (a threshold, a paper's value). ``key`` (setting, model, metric) lets a convergence check find it."""

    label: str
    mean: float
    se: float = 0.0
    n: int | None = None
    key: tuple[str, str, str] | None = None

    @property
    def missing(self) -> bool:
        return self.mean is None or math.isnan(self.mean)

    def __str__(self) -> str:
        if self.missing:
            return f"{self.label} (missing)"
        if self.n is None:
            return f"{self.label} {self.mean:.3g}"
        se = "?" if math.isnan(self.se) else f"{self.se:.3f}"
        return f"{self.label} {self.mean:.3f} ± {se} (n={self.n})"


def exact(label: str, value: float) -> Quantity:
    """A number without error: a threshold, a deterministic count, a paper's value."""
    return Quantity(label, float(value))


def missing(label: str) -> Quantity:
    return Quantity(label, float("nan"))


def from_seeds(label: str, mean: float, sd: float, n: int, level: str = "run",
               key: tuple[str, str, str] | None = None) -> Quantity:
    """A mean over ``n`` seeds (``level="run"``: one value per seed) or over the pairs of ``n`` seeds
    (``level="pair"``), with its standard error by ``RULE``."""
    if level not in ("run", "pair"):
        raise ValueError(f"level={level!r}; use 'run' or 'pair'.")
    n = int(n)
    if n < 2 or sd is None or math.isnan(sd):
        se = float("nan")
    else:
        se = float(sd) * (math.sqrt(2 / n) if level == "pair" else 1 / math.sqrt(n))
    return Quantity(label, float(mean), se, n, key)


def from_values(label: str, values: Sequence[float], key: tuple[str, str, str] | None = None) -> Quantity:
    """The mean of independent per-seed ``values`` with its standard error."""
    s = pd.Series(values, dtype=float).dropna()
    if s.empty:
        return missing(label)
    return from_seeds(label, float(s.mean()), float(s.std(ddof=1)) if len(s) > 1 else float("nan"), len(s), "run",
                      key)


def fraction(label: str, successes: int, n: int) -> Quantity:
    """A share of ``n`` independent trials (e.g. layers where a change went the good way), with the standard error
    of a fair coin (0.5/√n): comparing it with 0.5 is a sign test at ``Z`` standard errors."""
    return Quantity(label, successes / n, 0.5 / math.sqrt(n), n) if n else missing(label)


# ------------------------------------------------------------------------------------------------------
# Tests of a claim: comparisons, combined
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    verdict: str
    reason: str
    difference: float = float("nan")
    difference_se: float = float("nan")
    n: int | None = None
    moving: tuple[str, ...] = ()


@dataclass(frozen=True)
class Compare:
    """``a relation b + offset`` with ``relation`` one of ">", "<" (e.g. SAE IoU > oracle IoU − 0.05:
    ``Compare(iou, ">", oracle, offset=-0.05)``)."""

    a: Quantity
    relation: str
    b: Quantity
    offset: float = 0.0

    def __post_init__(self) -> None:
        if self.relation not in (">", "<"):
            raise ValueError(f"relation={self.relation!r}; use '>' or '<'.")

    def __str__(self) -> str:
        off = f" {'+' if self.offset > 0 else '−'} {abs(self.offset):g}" if self.offset else ""
        return f"{self.a} {self.relation} {self.b}{off}"

    def decide(self, movement: Mapping[tuple, float], exact_means: bool = False,
               settled: Mapping[tuple, float] | None = None) -> Outcome:
        quantities = (self.a, self.b)
        if any(q.missing for q in quantities):
            return Outcome(MISSING, "absent: " + ", ".join(q.label for q in quantities if q.missing))
        sign = 1.0 if self.relation == ">" else -1.0
        d = sign * (self.a.mean - self.b.mean - self.offset)
        if exact_means:
            verdict = HOLDS if d > 0 else FAILS if d < 0 else INCONCLUSIVE
            return Outcome(verdict, "the paper's means", d, 0.0)
        se = math.sqrt(self.a.se ** 2 + self.b.se ** 2)
        ns = [q.n for q in quantities if q.n is not None]
        n = min(ns) if ns else None
        if n is not None and n < MIN_SEEDS:
            return Outcome(INCONCLUSIVE, f"{n} seeds (< {MIN_SEEDS})", d, se, n)
        if math.isnan(se):
            return Outcome(INCONCLUSIVE, "no seed spread", d, se, n)
        verdict = HOLDS if d > Z * se else FAILS if d < -Z * se else INCONCLUSIVE
        reason = (f"difference {d:+.3g} {'beyond' if verdict != INCONCLUSIVE else 'within'} {Z:g} se "
                  f"({Z * se:.3g})")
        moved = [(q.key, movement[q.key]) for q in quantities if q.key is not None and q.key in movement]
        if moved:
            # Still moving: what matters is how far the compared *difference* moved (two curves rising side by
            # side leave it where it is), from both sides' changes (``settled``: the change of a side not judged
            # moving on its own; absent, 0). The verdict stands only if the difference would survive that movement
            # again, either way: a decided one stays beyond Z se, an inconclusive one could not be carried past Z se.
            settled = settled or {}
            shift = sum(sign * (1 if q is self.a else -1) * movement.get(q.key, settled.get(q.key, 0.0))
                        for q in quantities if q.key is not None)
            names = tuple(f"{k[1]} {k[2]} ({m:+.3f})" for k, m in moved)
            reach = abs(d) + abs(shift) > Z * se if verdict == INCONCLUSIVE else abs(d) - abs(shift) <= Z * se
            if reach:
                return Outcome(NOT_TESTED, f"still moving: {'; '.join(names)}; the difference moved {shift:+.3g}",
                               d, se, n, names)
            reason += (f"; its own movement ({shift:+.3g}) again could not decide it" if verdict == INCONCLUSIVE
                       else f"; survives its own movement ({shift:+.3g}) again")
        return Outcome(verdict, reason, d, se, n)


class _Combination:
    """Parts decided together: the outcome is the part whose verdict comes first in ``order`` (ties: the part
    least clearly decided)."""

    order: tuple[str, ...]
    joiner: str

    def __init__(self, *parts) -> None:
        self.parts = tuple(parts)

    def __str__(self) -> str:
        return self.joiner.join(str(p) for p in self.parts)

    def decide(self, movement: Mapping[tuple, float], exact_means: bool = False,
               settled: Mapping[tuple, float] | None = None) -> Outcome:
        outcomes = [p.decide(movement, exact_means, settled) for p in self.parts]
        if not outcomes:
            return Outcome(MISSING, "nothing to compare")
        first = min(outcomes, key=lambda o: (self.order.index(o.verdict),
                                             abs(o.difference) / o.difference_se if o.difference_se else 0.0))
        moving = tuple(m for o in outcomes for m in o.moving)
        return Outcome(first.verdict, first.reason, first.difference, first.difference_se, first.n, moving)


class AllOf(_Combination):
    """Every part must hold: decided by its weakest part (missing anywhere: missing; then any failure fails)."""

    order = (MISSING, FAILS, NOT_TESTED, INCONCLUSIVE, HOLDS)
    joiner = "; "


class AnyOf(_Combination):
    """One part must hold (e.g. "at some swept scale"): decided by its strongest part (missing anywhere: missing)."""

    order = (MISSING, HOLDS, NOT_TESTED, INCONCLUSIVE, FAILS)
    joiner = " OR "


@dataclass(frozen=True)
class Follows:
    """``test`` on numbers measured once, after training, without a convergence curve of their own (e.g. the CE
    loss with the SAE spliced in), decided only where the comparison they follow is: while ``proxy`` (e.g. the same
    models' MSE, which the CE loss follows) is "not tested" because it still moves, so is ``test`` (our choice: the
    size of the CE's own movement is not measured, so no verdict on it is kept against a moving proxy)."""

    test: Compare | AllOf | AnyOf
    proxy: Compare | AllOf | AnyOf
    proxy_name: str

    def __str__(self) -> str:
        return str(self.test)

    def decide(self, movement: Mapping[tuple, float], exact_means: bool = False,
               settled: Mapping[tuple, float] | None = None) -> Outcome:
        out = self.test.decide(movement, exact_means, settled)
        if exact_means or out.verdict == MISSING:
            return out
        proxy = self.proxy.decide(movement, exact_means, settled)
        if proxy.verdict == NOT_TESTED:
            return Outcome(NOT_TESTED, f"follows {self.proxy_name}, not tested: {proxy.reason}", out.difference,
                           out.difference_se, out.n, proxy.moving)
        return out


# ------------------------------------------------------------------------------------------------------
# Claims and the table
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """A paper's claim in one setting and the test that decides it. ``paper_value``: the paper's own number(s) as
    text; ``paper_test``: the same test on the paper's numbers (exact quantities), where the paper has them."""

    paper: str
    claim: str
    setting: str
    test: Compare | AllOf | AnyOf | Follows
    paper_value: str = ""
    paper_test: Compare | AllOf | AnyOf | None = None
    note: str = ""
    unconverged: str = ""
    """Why the run behind the claim had not converged (e.g. a solver's step cap), if so: the claim is then not
    tested."""


def decide(claim: Claim, profile: str, movement: Mapping[tuple, float] | None = None,
           settled: Mapping[tuple, float] | None = None) -> Outcome:
    """The claim's verdict at ``profile``; ``movement`` maps (setting, model, metric) to how much that metric
    still moved at the end of training (only metrics judged still moving), ``settled`` the same for the metrics
    judged settled (counted in a compared difference's movement when its other side still moves)."""
    out = claim.test.decide(movement or {}, settled=settled)
    if out.verdict == MISSING:
        return out
    if profile == "smoke":
        return Outcome(NOT_TESTED, SMOKE_REASON, out.difference, out.difference_se, out.n)
    if claim.unconverged:
        return Outcome(NOT_TESTED, f"not converged: {claim.unconverged}", out.difference, out.difference_se, out.n)
    return out


def claims_table(claims: Iterable[Claim], profile: str, movement: Mapping[tuple, float] | None = None,
                 settled: Mapping[tuple, float] | None = None) -> pd.DataFrame:
    """One row per claim with the columns ``CLAIM_COLUMNS`` (``movement``, ``settled``: as ``decide``)."""
    rows = []
    for c in claims:
        out = decide(c, profile, movement, settled)
        paper = c.paper_test.decide({}, exact_means=True).verdict if c.paper_test is not None else ""
        ours = str(c.test) + (f" [{c.note}]" if c.note else "")
        rows.append({"paper": c.paper, "claim": c.claim, "setting": c.setting, "verdict": out.verdict,
                     "reason": out.reason, "ours": ours, "difference": out.difference,
                     "difference_se": out.difference_se, "n": out.n, "paper_value": c.paper_value,
                     "paper_verdict": paper, "still_moving": "; ".join(out.moving), "rule": RULE,
                     "profile": profile})
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=list(CLAIM_COLUMNS))
    df["n"] = df["n"].astype("Int64")
    return df[list(CLAIM_COLUMNS)]


def counts(table: pd.DataFrame) -> dict[str, int]:
    """How many claims of each verdict (every verdict of ``VERDICTS`` present as a key)."""
    got = table["verdict"].value_counts() if "verdict" in table else {}
    return {v: int(got.get(v, 0)) for v in VERDICTS}


def summary_line(table: pd.DataFrame, profile: str) -> str:
    """One sentence: the verdict counts at ``profile``."""
    c = counts(table)
    text = ", ".join(f"{n} {v}" for v, n in c.items() if n)
    head = f"{len(table)} claims at profile '{profile}': {text or 'none'}"
    return head + (f" ({SMOKE_REASON})" if profile == "smoke" else "")


def print_claims(table: pd.DataFrame, profile: str) -> None:
    """The summary line, then one line per claim: [verdict] setting: claim — ours (reason)."""
    print(summary_line(table, profile))
    for r in table.itertuples():
        paper = f" | paper: {r.paper_value} ({r.paper_verdict})" if r.paper_value else ""
        print(f"[{r.verdict}] {r.setting}: {r.claim} — {r.ours} ({r.reason}){paper}")


def digest_markdown(table: pd.DataFrame, profile: str) -> str:
    """What the verdicts say, as Markdown written from the claims table alone (no number typed by hand): how many
    claims are decided (holds, fails or inconclusive), then per verdict the claims, each with our numbers beside
    the paper's value and the paper's own verdict."""
    decided = sum(n for v, n in counts(table).items() if v in (HOLDS, FAILS, INCONCLUSIVE))
    lines = [f"**{decided} of {len(table)} claims decided** at profile `{profile}` (holds, fails or inconclusive). "
             f"{summary_line(table, profile)}."]
    for verdict in VERDICTS:
        rows = table[table["verdict"] == verdict]
        if rows.empty:
            continue
        lines += ["", f"**{verdict.capitalize()}** ({len(rows)}):", ""]
        for r in rows.itertuples():
            paper = f"; P1: {r.paper_value} ({r.paper_verdict} in P1's numbers)" if r.paper_value else ""
            why = f" — {r.reason}" if verdict in (NOT_TESTED, MISSING) and r.reason else ""
            lines.append(f"* {r.setting}: {r.claim}. Ours: {r.ours}{paper}{why}")
    return "\n".join(lines)
