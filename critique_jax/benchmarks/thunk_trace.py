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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Split:
    """One traced run: its wall seconds, each thunk's seconds, and per group their sum and
    share of the busy time (the thunk seconds of every thread)."""

    wall: float
    per_thunk: Counter
    seconds: dict[str, float]  # per group, in the order of the groups given
    share: dict[str, float]
    busy: list[float]  # each thread's own thunk seconds over the wall time, largest first


class CpuUse:
    """The block's wall `seconds` and the `cores` this process kept busy meanwhile: its user +
    system CPU seconds over the wall seconds. A thread's thunk time misses its work inside
    another thread's thunk (XLA:CPU splits a large matmul across the pool), so only this says
    how busy the cores were. Pool threads that spin while waiting for work count as busy."""

    seconds: float
    cores: float

    def __enter__(self) -> CpuUse:
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cores = (time.process_time() - self._cpu) / self.seconds


def traced_split(
    run: Callable[[], Any],
    names: Mapping[str, Thunk],
    group_of: Callable[[Thunk], str],
    groups: Sequence[str],
) -> Split:
    """`run()` once under the profiler, its thunks (`names`) grouped by `group_of`. Spans
    that are not thunks of `names` (the executor's own, waits, loops) are left out."""
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
    total: Counter = Counter()
    for name, seconds in per_thunk.items():
        total[group_of(names[name])] += seconds
    busy = sum(threads.values())
    return Split(
        wall=wall,
        per_thunk=per_thunk,
        seconds={g: total[g] for g in groups},
        share={g: total[g] / busy if busy else 0.0 for g in groups},
        busy=sorted((t / wall for t in threads.values()), reverse=True),
    )


def print_split(
    header: str, amounts: Mapping[str, float], share: Mapping[str, float], unit: str, result: dict
) -> None:
    """The header, each group's amount and share, then `result` as the last line (one JSON
    object)."""
    print(header)
    for group, amount in amounts.items():
        print(f"  {group:16s} {amount:8.2f} {unit}  {share[group]:5.1%}")
    print(json.dumps(result))
