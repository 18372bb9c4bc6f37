"""XLA:CPU's own account of a compiled program, for the decode and train profiles: the thunks
its text lists, their seconds in one `jax.profiler` trace, and those seconds grouped by the
code that made each thunk (its op_name, the JAX call stack that emitted it).

XLA:CPU runs a program as a list of thunks (a matmul, a fused loop, a copy) on a pool of
threads, several at once when independent; the trace records each thunk's time on its thread.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax

from critique_jax.errors import UserError


class Thunk(NamedTuple):
    kind: str  # the HLO opcode: dot, fusion, copy, ...
    op_name: str  # the JAX call stack that emitted it; "" for what XLA made on its own


def require_cpu(tool: str) -> None:
    if jax.default_backend() != "cpu":
        raise UserError(
            f"{tool} splits XLA:CPU thunks; this backend is {jax.default_backend()!r}. Run it "
            "with JAX_PLATFORMS=cpu, or profile an accelerator with jax.profiler and "
            "TensorBoard."
        )


def thunks(hlo_text: str) -> dict[str, Thunk]:
    """Instruction name -> Thunk, for the instructions of a compiled program's text that run
    as thunks of their own (not a loop, whose span holds its body's thunks)."""
    instruction = re.compile(
        r"^\s*(?:ROOT )?%?([\w.\-]+) = (?:\(.*?\)|\S+) (\w[\w-]*)\((.*)$", re.M
    )
    op_name = re.compile(r'op_name="([^"]*)"')
    found = {}
    for name, kind, rest in instruction.findall(hlo_text):
        if kind not in ("while", "conditional", "call"):
            named = op_name.search(rest)
            found[name] = Thunk(kind, named.group(1) if named else "")
    return found


def traced_run(
    run: Callable[[], Any], names: Mapping[str, Thunk]
) -> tuple[float, Counter, Counter]:
    """`run()` once under the profiler: its wall seconds, and seconds per thunk (by
    instruction name) and per thread. Spans that are not thunks of `names` (the executor's
    own, waits, loops) are left out."""
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            began = time.perf_counter()
            run()
            wall = time.perf_counter() - began
        traces = sorted(Path(trace_dir).rglob("*.xplane.pb"))
        if not traces:
            raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
        per_thunk: Counter = Counter()
        threads: Counter = Counter()
        for plane in jax.profiler.ProfileData.from_file(str(traces[-1])).planes:
            for line in plane.lines:
                for event in line.events:
                    name = event.name.removeprefix("end: ")
                    if name in names:
                        per_thunk[name] += event.duration_ns / 1e9
                        threads[line.name] += event.duration_ns / 1e9
    return wall, per_thunk, threads


def grouped(
    per_thunk: Mapping[str, float],
    names: Mapping[str, Thunk],
    group_of: Callable[[Thunk], str],
    groups: Sequence[str],
) -> dict[str, float]:
    """Seconds per group, in the order of `groups`."""
    total: Counter = Counter()
    for name, seconds in per_thunk.items():
        total[group_of(names[name])] += seconds
    return {g: total[g] for g in groups}


def print_split(header: str, amounts: Mapping[str, float], unit: str, result: dict) -> None:
    """The header, each group's amount and share of their sum, then `result` as the last line
    (one JSON object)."""
    busy = sum(amounts.values())
    print(header)
    for group, amount in amounts.items():
        share = amount / busy if busy else 0.0
        print(f"  {group:16s} {amount:8.2f} {unit}  {share:5.1%}")
    print(json.dumps(result))
