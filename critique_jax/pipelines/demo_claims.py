"""The demo's results: read back from the files its stages wrote, its table, the papers'
claims checked on them, and their summary over several seeds.

Each claim is a paired difference between two numbers of one run (same seed, same test
questions) and the bar it must clear. `python -m critique_jax.train seeds=3` runs the demo
for seeds 0..2 and reports, per claim, the difference in every seed and whether it holds in
all of them; per metric, the mean and standard deviation over seeds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from critique_jax.pipelines.reporting import sorted_levels, table_cell


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


# --------------------------------------------------------------------------- one run

ROWS = (
    ("actor_accuracy", "actor (SFT), greedy"),
    ("refine_accuracy", "actor + 1 critique -> refine round"),
    ("second_round_accuracy", "actor + 2 critique -> refine rounds"),
    ("oracle_refine_accuracy", "  the same, 1 round with the oracle critic (the ceiling)"),
    ("oracle_second_round_accuracy", "  the same, 2 rounds with the oracle critic"),
    ("critic_verdict_accuracy", "critic verdict accuracy (held-out)"),
    ("critic_verdict_chance", "  chance (majority label)"),
    ("critic_balanced_accuracy", "critic balanced accuracy (chance 0.5)"),
    ("critic_first_error_accuracy", "critic first-error-step accuracy"),
    ("critic_quote_fidelity", "critic steps quoted verbatim"),
    ("critic_check_agreement", "critic verdicts that follow from its own check"),
    ("majority_vote_accuracy", "majority vote @K"),
    ("critique_majority_vote_accuracy", "critique -> refine, then majority vote @K"),
    ("critic_weighted_vote_accuracy", "critic-weighted vote @K (critic as verifier)"),
    ("pass_at_k", "pass@K (oracle verifier)"),
    ("cu_sft_critic", "mean CU, SFT critic (held-out)"),
    ("cu_rco_critic", "mean CU, RCO critic (held-out)"),
    ("self_train_vanilla_accuracy", "self-training, vanilla (rejection sampling)"),
    ("self_train_critique_accuracy", "self-training, critique-in-the-loop"),
)
BY_LEVEL = (
    ("actor_accuracy_by_difficulty", "actor"),
    ("refine_accuracy_by_difficulty", "actor + critique -> refine"),
    ("oracle_refine_accuracy_by_difficulty", "actor + oracle critique -> refine"),
    ("self_train_vanilla_accuracy_by_difficulty", "self-train vanilla"),
    ("self_train_critique_accuracy_by_difficulty", "self-train critique-in-the-loop"),
)


def _at(points: list[dict[str, Any]], key: str, value: int) -> dict[str, Any]:
    return next(p for p in points if p[key] == value)


def demo_results(
    dirs: dict[str, Path], seed: int, sizes: dict[str, Any], self_train_critic: str
) -> dict[str, Any]:
    """The demo's results from its stages' results files (`dirs`: stage section -> its
    run_dir), with the claims checked on them."""

    def read(name: str, file: str = "results.json") -> dict[str, Any]:
        return json.loads((dirs[name] / file).read_text())

    st = dirs["self_train"]
    actor = read("self_train", "iter_0/results.json")
    vanilla = read("self_train", "vanilla/iter_1/results.json")
    critique = read("self_train", "critique/iter_1/results.json")
    verdicts, collection = read("critic_eval"), read("critic_data", "summary.json")
    tts, oracle = read("test_time"), read("test_time_oracle")["sequential"]
    cu = {c["name"]: c for c in read("rco_eval", "comparison.json")["critics"]}
    seq, par, k = tts["sequential"], tts["parallel"], max(tts["ks"])
    refined = _at(seq, "rounds", 1)
    chance = max(verdicts["base_rate_correct"], 1 - verdicts["base_rate_correct"])
    results = {
        "seed": seed,
        "actor_accuracy": actor["accuracy"],
        "actor_accuracy_by_difficulty": actor["by_level"],
        "critic_verdict_accuracy": verdicts["verdict_accuracy"],
        "critic_verdict_chance": chance,
        "critic_balanced_accuracy": verdicts["balanced_accuracy"],
        "critic_first_error_accuracy": verdicts["first_error"]["accuracy"],
        "critic_quote_fidelity": verdicts["quote_fidelity"],
        "critic_check_agreement": verdicts["check_agreement"],
        "critic_unparseable_rate": verdicts["unparseable_rate"],
        "refine_accuracy": refined["accuracy"],
        "refine_accuracy_by_difficulty": refined["by_level"],
        "second_round_accuracy": _at(seq, "rounds", 2)["accuracy"],
        "oracle_refine_accuracy": _at(oracle, "rounds", 1)["accuracy"],
        "oracle_refine_accuracy_by_difficulty": _at(oracle, "rounds", 1)["by_level"],
        "oracle_second_round_accuracy": _at(oracle, "rounds", 2)["accuracy"],
        "tts_initial_accuracy": _at(seq, "rounds", 0)["accuracy"],
        "sequential_accuracy_by_rounds": {str(p["rounds"]): p["accuracy"] for p in seq},
        "majority_vote_accuracy": _at(par["majority"], "k", k)["accuracy"],
        "critique_majority_vote_accuracy": _at(par["refine_vote"], "k", k)["accuracy"],
        "critic_weighted_vote_accuracy": _at(par["critic_weighted"], "k", k)["accuracy"],
        "pass_at_k": _at(par["oracle"], "k", k)["accuracy"],
        "cu_sft_critic": cu["sft"]["mean_cu"],
        "cu_rco_critic": cu["rco"]["mean_cu"],
        "rco_eval": cu,
        "self_train_critic": self_train_critic,
        "self_train_vanilla_accuracy": vanilla["accuracy"],
        "self_train_critique_accuracy": critique["accuracy"],
        "self_train_vanilla_accuracy_by_difficulty": vanilla["by_level"],
        "self_train_critique_accuracy_by_difficulty": critique["by_level"],
        "self_train_kept": {"vanilla": vanilla["collection"], "critique": critique["collection"]},
        "critique_collection": collection,
        "sizes": {
            **sizes,
            "test_questions": tts["questions"],
            "k": k,
            "critic_sft_records": collection["sft_records"],
        },
        "paths": {
            "plot": tts.get("plot"),
            "actor_hf": str(st / "iter_0" / "hf"),
            "critic_hf": str(dirs["critic_sft"] / "hf"),
            "rco_critic_hf": str(dirs["rco"] / "hf"),
            "self_train_vanilla_hf": str(st / "vanilla" / "iter_1" / "hf"),
            "self_train_critique_hf": str(st / "critique" / "iter_1" / "hf"),
            "self_train_table": str(st / "comparison.md"),
            "rco_table": str(dirs["rco_eval"] / "comparison.md"),
        },
    }
    results["claims"] = claims(results)
    return results


def results_table(results: dict[str, Any]) -> str:
    """Markdown: the headline metrics, then accuracy by difficulty (number of steps)."""
    k = results["sizes"]["k"]
    lines = [
        f"# critique_jax demo (seed {results['seed']}, K={k}, "
        f"self-training critic: {results['self_train_critic']})",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    lines += [f"| {title} | {table_cell(results.get(key))} |" for key, title in ROWS]
    levels = sorted_levels({lv for key, _ in BY_LEVEL for lv in results[key]})
    lines += [
        "",
        "| accuracy by difficulty | " + " | ".join(f"level {lv}" for lv in levels) + " |",
        "|---|" + "---:|" * len(levels),
    ]
    for key, title in BY_LEVEL:
        lines.append(
            f"| {title} | " + " | ".join(table_cell(results[key].get(lv)) for lv in levels) + " |"
        )
    lines += ["", *claims_table(results["claims"])]
    times = results["timings"]
    lines += ["", "| phase (all runs of this run_dir) | wall s | CPU s |", "|---|---:|---:|"]
    lines += [f"| {name} | {t['wall_s']} | {t['cpu_s']} |" for name, t in times.items()]
    total = {k: round(sum(t[k] for t in times.values()), 1) for k in ("wall_s", "cpu_s")}
    lines.append(f"| total | {total['wall_s']} | {total['cpu_s']} |")
    return "\n".join(lines) + "\n"
