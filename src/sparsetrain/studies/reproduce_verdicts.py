"""The verdicts of the reproduction benchmark: the papers' claims checked like with like, case by case.

A *case* is one data/model pair at one target sparsity; every comparison is made at equal sparsity, on the
means over seeds, with the significance rule of :mod:`sparsetrain.analysis.significance` (a difference counts
when it exceeds the combined standard deviation of the seeds). Methods are compared within the groups the papers
use (:data:`FAMILIES`): gradual magnitude pruning (GMP per layer, GMP with one global threshold, GraNet), dynamic
sparse training (RigL, SET, SNFS, GraNet-ST), pruning at initialisation (SNIP, GraSP, SynFlow) and lottery tickets
(IMP). Training FLOPs stand beside every accuracy (:mod:`.reproduce_results`: in dense trainings of the recipe).

The claims (:func:`check_claims`): GraNet >= GMP at high sparsity, per layer and with GraNet's own global
allocation (so regeneration alone is measured); GraNet-ST > RigL > SET > static (GraNet §4, RigL §4); training
sparse during training beats pruning at initialisation, best against best and per family (GraNet §4); RigL with
more epochs against itself and the best at-init mask (RigL §4.2: the budget); IMP tickets > their random
re-initialisation (Frankle & Carbin 2019). :func:`pairwise_table` compares every during-training method with every
at-init method; :func:`family_table` shows the best of each family per case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sparsetrain.analysis.significance import Difference, difference
from sparsetrain.tables import Column, render

from .reproduce import LONGER, ReproSetting
from .reproduce_results import Cell, aggregate

__all__ = ["FAMILIES", "DURING_TRAINING", "AT_INIT", "Result", "Case", "Claim", "result", "check_claims",
           "pairwise_table", "family_table"]

#: Method families, as GraNet's and RigL's papers group them.
FAMILIES: dict[str, tuple[str, ...]] = {
    "gradual": ("gmp", "gmp_global", "granet"),
    "dynamic sparse": ("rigl", "set", "snfs", "granet_st"),
    "at init": ("snip", "grasp", "synflow"),
    "IMP": ("imp",),
}
#: Methods that choose their mask during training, at the recipe's budget.
DURING_TRAINING = FAMILIES["gradual"] + FAMILIES["dynamic sparse"]
#: Methods that prune at initialisation.
AT_INIT = FAMILIES["at init"]


@dataclass(frozen=True)
class Result:
    """One cell over its seeds: test accuracy mean / std, seeds, training FLOPs (dense trainings; None unknown)."""

    method: str
    acc: float
    std: float
    n: int
    train_flops: float | None

    def text(self) -> str:
        """E.g. ``granet 77.13 ± 0.65 (0.20x)``: accuracy in %, training FLOPs in dense trainings."""
        flops = "" if self.train_flops is None else f" ({self.train_flops:.2f}x)"
        return f"{self.method} {100 * self.acc:.2f} ± {100 * self.std:.2f}{flops}"

    def minus(self, other: Result) -> Difference:
        """``self - other`` under the significance rule."""
        return difference(self.acc, self.std, self.n, other.acc, other.std, other.n)


def result(cells: Mapping[tuple[str, float], Cell], method: str, sparsity: float) -> Result | None:
    """The :class:`Result` of ``(method, sparsity)``, or None when it has no finished seed."""
    cell = cells.get((method, sparsity))
    if cell is None or not cell.acc:
        return None
    agg = aggregate(cell)
    return Result(method, agg["acc"], agg["acc_std"], agg["n"], agg["train_flops"])


def _best(cells: Mapping[tuple[str, float], Cell], methods: Sequence[str], sparsity: float) -> Result | None:
    found = [r for m in methods if (r := result(cells, m, sparsity)) is not None]
    return max(found, key=lambda r: r.acc) if found else None


@dataclass(frozen=True)
class Case:
    """One case of a claim.

    Attributes:
        name: e.g. ``mnist1d-cnn1d @ 95%``.
        holds: the claim holds on the means.
        beyond: it holds and the difference is beyond noise.
        reversed: it fails and the difference is beyond noise.
        detail: the numbers.
    """

    name: str
    holds: bool
    beyond: bool
    reversed: bool
    detail: str


def _case(name: str, a: Result, b: Result, strict: bool = True) -> Case:
    diff = a.minus(b)
    holds = diff.diff > 0 if strict else diff.diff >= 0
    return Case(name, holds, holds and diff.beyond_noise, not holds and diff.beyond_noise,
                f"{a.text()} vs {b.text()}: {100 * diff.diff:+.2f} pts, {diff.words}")


@dataclass
class Claim:
    """A claim and its cases.

    Attributes:
        text: the claim.
        cases: one :class:`Case` per data/model pair and sparsity (or IMP level) where it was measured.
    """

    text: str
    cases: list[Case] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """E.g. "holds in 7 of 9 cases (5 beyond noise; 1 reversed beyond noise)", or "not measured"."""
        if not self.cases:
            return "not measured"
        n = len(self.cases)
        k = sum(c.holds for c in self.cases)
        beyond = sum(c.beyond for c in self.cases)
        reversed_ = sum(c.reversed for c in self.cases)
        head = f"holds in all {n} cases" if k == n else (f"does not hold in any of {n} cases" if k == 0 else
                                                          f"holds in {k} of {n} cases")
        return f"{head} ({beyond} beyond noise; {reversed_} reversed beyond noise)"


def check_claims(setting: ReproSetting, results: Mapping[str, Mapping[tuple[str, float], Cell]]) -> list[Claim]:
    """Check the claims (module docstring) case by case; cases lacking a method are left out.

    Returns:
        The claims, in this order: GraNet >= GMP per layer; GraNet >= GMP global; GraNet-ST > RigL > SET >
        static; best during-training > best at-init; best gradual > best at-init; best dynamic sparse > best
        at-init; RigL with :data:`~sparsetrain.studies.reproduce.LONGER` x the epochs > RigL; that RigL > best
        at-init; IMP tickets > their random re-initialisation.
    """
    high = sorted(setting.sparsities)[-2:]
    claims = {
        "gmp": Claim("GraNet (s_i = 0) >= GMP per layer, at the two highest sparsities"),
        "gmp_global": Claim("GraNet (s_i = 0) >= GMP with the same global allocation, at the two highest "
                            "sparsities (regeneration alone)"),
        "chain": Claim("GraNet-ST > RigL > SET > static"),
        "best": Claim("the best during-training method > the best at-init method"),
        "gradual": Claim("the best gradual method (GMP, global GMP, GraNet) > the best at-init method"),
        "dynamic": Claim("the best dynamic sparse method (RigL, SET, SNFS, GraNet-ST) > the best at-init method"),
        "longer": Claim(f"RigL trained {LONGER}x the epochs > RigL"),
        "longer_init": Claim(f"RigL trained {LONGER}x the epochs > the best at-init method"),
        "imp": Claim("IMP tickets > the same mask randomly re-initialised"),
    }
    for bench in setting.benchmarks:
        cells = results.get(bench.key, {})
        for s in setting.sparsities:
            case = f"{bench.key} @ {100 * s:g}%"
            granet = result(cells, "granet", s)
            for key in ("gmp", "gmp_global"):
                other = result(cells, key, s)
                if s in high and granet and other:
                    claims[key].cases.append(_case(case, granet, other, strict=False))
            chain = [result(cells, m, s) for m in ("granet_st", "rigl", "set", "static")]
            if all(chain):
                links = [_case(case, chain[i], chain[i + 1]) for i in range(3)]  # type: ignore[arg-type]
                claims["chain"].cases.append(Case(case, all(c.holds for c in links),
                                                  all(c.beyond for c in links), any(c.reversed for c in links),
                                                  "; ".join(c.detail for c in links)))
            at_init = _best(cells, AT_INIT, s)
            for key, methods in (("best", DURING_TRAINING), ("gradual", FAMILIES["gradual"]),
                                 ("dynamic", FAMILIES["dynamic sparse"]), ("longer_init", ("rigl_3x",))):
                best = _best(cells, methods, s)
                if best and at_init:
                    claims[key].cases.append(_case(case, best, at_init))
            longer, rigl = result(cells, "rigl_3x", s), result(cells, "rigl", s)
            if longer and rigl:
                claims["longer"].cases.append(_case(case, longer, rigl))
            ticket, reinit = result(cells, "imp", s), result(cells, "imp_reinit", s)
            if ticket and reinit:
                measured = aggregate(cells[("imp", s)])["sparsity"]
                claims["imp"].cases.append(_case(f"{bench.key} @ {100 * measured:.1f}%", ticket, reinit))
    return list(claims.values())


def pairwise_table(setting: ReproSetting, results: Mapping[str, Mapping[tuple[str, float], Cell]]) -> str:
    """Markdown: every during-training method (and RigL trained longer, and IMP) against every at-init method.

    A cell reads ``w/n (+b, -r)``: of the ``n`` cases (data/model pairs x sparsities) where both were measured,
    the row's method is higher in ``w``, higher beyond noise in ``b`` and lower beyond noise in ``r``.
    """
    rows_methods = [m for m in (*DURING_TRAINING, "rigl_3x", "imp") if m in setting.methods]
    columns = [Column("method", align="left"), *(Column(m, f"vs {m}") for m in AT_INIT if m in setting.methods)]
    rows = []
    for method in rows_methods:
        row: dict[str, str] = {"method": method}
        for other in AT_INIT:
            if other not in setting.methods:
                continue
            cases = []
            for bench in setting.benchmarks:
                cells = results.get(bench.key, {})
                for s in setting.sparsities:
                    a, b = result(cells, method, s), result(cells, other, s)
                    if a and b:
                        cases.append(_case("", a, b))
            higher = sum(c.holds for c in cases)
            row[other] = (f"{higher}/{len(cases)} (+{sum(c.beyond for c in cases)}, "
                          f"-{sum(c.reversed for c in cases)})") if cases else "-"
        rows.append(row)
    return render(columns, rows, "markdown")


def family_table(setting: ReproSetting, cells: Mapping[tuple[str, float], Cell]) -> str:
    """Markdown for one benchmark: per sparsity, the best method of each family, accuracy % (mean ± std) and
    training FLOPs in dense trainings of the recipe."""
    families = [f for f in FAMILIES if any(m in setting.methods for m in FAMILIES[f])]
    columns = [Column("sparsity", align="left"), *(Column(f, f"best {f}", align="left") for f in families)]
    rows = []
    for s in setting.sparsities:
        row = {"sparsity": f"{100 * s:g}%"}
        for family in families:
            best = _best(cells, FAMILIES[family], s)
            row[family] = best.text() if best else "-"
        rows.append(row)
    return render(columns, rows, "markdown")
