"""The papers' claims as checks on demo results, and their summary over several seeds.

Each claim is a paired difference between two numbers of one run (same seed, same test
questions) and the bar it must clear. `python -m critique_jax.train seeds=3` runs the demo
for seeds 0..2 and reports, per claim, the difference in every seed and whether it holds in
all of them; per metric, the mean and standard deviation over seeds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from critique_jax.pipelines.reporting import table_cell


def _hardest(by_level: dict[str, Any]) -> str:
    return max(by_level, key=int)


def _refine_gain_by_level(r: dict[str, Any]) -> dict[str, float]:
    actor, refined = r["actor_accuracy_by_difficulty"], r["refine_accuracy_by_difficulty"]
    return {lv: refined[lv] - actor[lv] for lv in actor if lv in refined}


def _hard_gain_margin(r: dict[str, Any]) -> float:
    """How much more refinement gains on the hardest level than on the best other level."""
    gains = _refine_gain_by_level(r)
    hard = _hardest(gains)
    others = [g for lv, g in gains.items() if lv != hard]
    return gains[hard] - max(others, default=0.0)


def _hard_coverage(r: dict[str, Any], arm: str) -> float:
    coverage = r["self_train_kept"][arm]["coverage_by_level"]
    return coverage[_hardest(coverage)]


def _rounds_gain(r: dict[str, Any]) -> float:
    """Accuracy after the last sequential round minus after the first (R = 2 vs R = 1)."""
    by_round = r["sequential_accuracy_by_rounds"]
    return by_round[max(by_round, key=int)] - by_round["1"]


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    difference: Callable[[dict[str, Any]], float]
    bar: float  # the claim holds when difference >= bar (strict > when `strict`)
    strict: bool = False

    def holds(self, difference: float) -> bool:
        return difference > self.bar if self.strict else difference >= self.bar


CLAIMS = (
    Claim(
        "refine_beats_actor",
        "(a) one critique -> refine round beats the actor by >= 3 points",
        lambda r: r["refine_accuracy"] - r["actor_accuracy"],
        0.03,
    ),
    Claim(
        "refine_gains_most_on_hardest",
        "(a) the refine gain is largest on the hardest level",
        _hard_gain_margin,
        0.0,
        strict=True,
    ),
    Claim(
        "critique_vote_ge_vote",
        "(b) critique -> refine, then vote >= majority vote @K",
        lambda r: r["critique_majority_vote_accuracy"] - r["majority_vote_accuracy"],
        0.0,
    ),
    Claim(
        "critic_weighted_vote_gt_vote",
        "(b) critic-weighted vote > majority vote @K",
        lambda r: r["critic_weighted_vote_accuracy"] - r["majority_vote_accuracy"],
        0.0,
        strict=True,
    ),
    Claim(
        "rco_cu_gt_sft",
        "(c) RCO critic's mean CU > SFT critic's (held-out)",
        lambda r: r["cu_rco_critic"] - r["cu_sft_critic"],
        0.0,
        strict=True,
    ),
    Claim(
        "critique_self_train_ge_vanilla",
        "(d) critique-in-the-loop self-training >= vanilla",
        lambda r: r["self_train_critique_accuracy"] - r["self_train_vanilla_accuracy"],
        0.0,
    ),
    Claim(
        "critique_self_train_keeps_more_hard",
        "(d) critique-in-the-loop keeps more hardest-level questions",
        lambda r: _hard_coverage(r, "critique") - _hard_coverage(r, "vanilla"),
        0.0,
        strict=True,
    ),
    Claim(
        "second_round_helps",
        "(e) a second sequential round raises accuracy (R = 2 vs R = 1)",
        _rounds_gain,
        0.0,
        strict=True,
    ),
)


def claims(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every claim of one run: {name: {holds, difference}}."""
    out = {}
    for c in CLAIMS:
        d = round(c.difference(results), 4)
        out[c.name] = {"holds": c.holds(d), "difference": d}
    return out


def over_seeds(runs: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    """Per metric mean and sd over seeds; per claim the per-seed paired difference and
    whether it holds in every seed."""
    summary: dict[str, Any] = {"seeds": [r["seed"] for r in runs], "metrics": {}, "claims": {}}
    for key in metrics:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            summary["metrics"][key] = {
                "mean": statistics.fmean(values),
                "sd": sd,
                "per_seed": values,
            }
    for c in CLAIMS:
        diffs = [r["claims"][c.name]["difference"] for r in runs]
        summary["claims"][c.name] = {
            "holds": all(c.holds(d) for d in diffs),
            "per_seed_difference": diffs,
            "mean_difference": statistics.fmean(diffs),
        }
    return summary


def claims_table(per_claim: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: each claim, its paired difference(s) and whether it holds."""
    lines = ["| claim | difference | holds |", "|---|---:|:---:|"]
    for c in CLAIMS:
        entry = per_claim[c.name]
        diffs = entry.get("per_seed_difference", [entry.get("difference")])
        cell = ", ".join(f"{d:+.3f}" for d in diffs)
        lines.append(f"| {c.statement} | {cell} | {'yes' if entry['holds'] else 'no'} |")
    return lines


def seeds_table(summary: dict[str, Any], rows: Sequence[tuple[str, str]]) -> str:
    """Markdown: mean +- sd per metric over the seeds, then the claims."""
    seeds = summary["seeds"]
    lines = [
        f"# critique_jax demo over seeds {', '.join(map(str, seeds))}",
        "",
        "| metric | mean | sd | per seed |",
        "|---|---:|---:|---|",
    ]
    for key, title in rows:
        m = summary["metrics"].get(key)
        if m is not None:
            per = ", ".join(table_cell(v) for v in m["per_seed"])
            lines.append(f"| {title} | {m['mean']:.3f} | {m['sd']:.3f} | {per} |")
    lines += ["", *claims_table(summary["claims"])]
    return "\n".join(lines) + "\n"
