"""Readers for GSM8K, MATH, MathCritique records and chat-format SFT files.

Every reader turns a malformed record into a ``DataError`` that names the file, the line
(JSONL, 1-based) or record index (JSON), what is wrong and how to fix it, because a bad
row deep in a long data-collection run is otherwise a bare KeyError.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from critique_jax.data.math import gsm8k_gold, math_gold
from critique_jax.data.records import Problem
from critique_jax.errors import UserError

logger = logging.getLogger(__name__)

# Hub datasets that need a config name; everything else loads with none.
_HUB_CONFIGS = {"openai/gsm8k": "main", "gsm8k": "main"}
_CALCULATOR_RE = re.compile(r"<<[^<>]*>>")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}


class DataError(UserError):
    """A data file or record that cannot be read; the message says where and how to fix it."""


def _fail(where: str, problem: str, fix: str) -> DataError:
    return DataError(f"{where}: {problem}. Fix: {fix}.")


def read_records(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, record) pairs from a .jsonl file (one object a line) or a .json list.

    The location ("data.jsonl line 3", "data.json record 7") is what error messages cite.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(str(path), "file not found", "check the path (relative paths start at the cwd)")
    if path.suffix not in (".jsonl", ".json"):
        raise _fail(str(path), f"unknown extension {path.suffix!r}", "use a .json or .jsonl file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise _fail(
            f"{path} line {line}",
            f"not UTF-8 text (byte {raw[e.start : e.start + 1]!r} at offset {e.start})",
            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None
    if not text.strip():
        raise _fail(str(path), "the file is empty", "write the records into it, or fix the path")
    records: list[tuple[str, Any]] = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((f"{path} line {n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise _fail(
                    f"{path} line {n}",
                    f"invalid JSON ({e.msg} at column {e.colno})",
                    "make each line one complete JSON object",
                ) from e
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise _fail(
                f"{path} line {e.lineno}", f"invalid JSON ({e.msg})", "repair the JSON syntax"
            ) from e
        if not isinstance(data, list):
            raise _fail(
                str(path),
                f"top level is a {type(data).__name__}, not a list",
                "store the records as a JSON list, or one object a line in a .jsonl file",
            )
        records = [(f"{path} record {i}", r) for i, r in enumerate(data)]
    if not records:
        raise _fail(str(path), "the file holds no records", "write the records into it")
    for where, record in records:
        if not isinstance(record, dict):
            raise _fail(
                where,
                f"record is a {type(record).__name__}, not an object",
                "make every record a JSON object",
            )
    return records


def _field(where: str, record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _fail(
            where,
            f"missing or empty string field {key!r} (keys: {sorted(record)})",
            f"add {key!r} to the record or use the loader that matches this format",
        )
    return value


def _hub_or_local(
    source: str | Path, split: str, limit: int | None
) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """(name used in ids, records) for a local file or a datasets-hub name."""
    source = str(source)
    if source.endswith((".json", ".jsonl")) or Path(source).exists():
        records = read_records(source)
        name = Path(source).stem
    else:
        import datasets  # the hub path only; local files need no datasets import

        ds = datasets.load_dataset(source, _HUB_CONFIGS.get(source), split=split)
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        records = [(f"{source}[{split}] record {i}", dict(r)) for i, r in enumerate(ds)]
        name = split
    if limit is not None:
        records = records[:limit]
    return name, records


def load_gsm8k(source: str | Path, split: str = "test", limit: int | None = None) -> list[Problem]:
    """GSM8K problems from a local .json/.jsonl file or a hub name (``openai/gsm8k``).

    ``split`` picks the hub split; local files are read whole. The solution keeps the
    reasoning without the ``<<48/2=24>>`` calculator annotations; the answer is the gold
    number after ``####`` without thousands separators.
    """
    name, records = _hub_or_local(source, split, limit)
    problems = []
    for i, (where, r) in enumerate(records):
        answer_field = _field(where, r, "answer")
        try:
            gold = gsm8k_gold(answer_field)
        except ValueError as e:
            raise _fail(where, str(e), "end the answer with a '#### <number>' line") from e
        reasoning = answer_field.rsplit("####", 1)[0]
        problems.append(
            Problem(
                id=f"gsm8k/{name}/{i}",
                question=_field(where, r, "question").strip(),
                answer=gold,
                solution=_CALCULATOR_RE.sub("", reasoning).strip(),
                source="gsm8k",
            )
        )
    return problems


def _math_level(where: str, level: Any) -> int | None:
    """MATH level as an int: 3, "3" and "Level 3" -> 3; "Level ?" (2 train rows) -> None."""
    if level is None or isinstance(level, int):
        return level
    m = re.fullmatch(r"\s*(?:Level\s*)?(\d+|\?)\s*", str(level))
    if m is None:
        raise _fail(where, f"unreadable level {level!r}", "use an int or 'Level N'")
    return None if m.group(1) == "?" else int(m.group(1))


def load_math(source: str | Path, split: str = "test", limit: int | None = None) -> list[Problem]:
    """MATH problems (Hendrycks MATH, MATH500) from a local file or a hub name.

    Gold answer: the ``answer`` field when present, else the last ``\\boxed{}`` of the
    solution. Records with neither are skipped with a warning (the Hendrycks train set has
    one, train/number_theory/7115, whose box is empty); all of them missing is an error.
    ``subject`` comes from ``type`` (Hendrycks) or ``subject`` (MATH500).
    """
    name, records = _hub_or_local(source, split, limit)
    problems: list[Problem] = []
    skipped: list[str] = []
    for i, (where, r) in enumerate(records):
        solution = _field(where, r, "solution")
        if isinstance(r.get("answer"), str) and r["answer"].strip():
            gold = r["answer"].strip()
        else:
            try:
                gold = math_gold(solution)
            except ValueError as e:
                skipped.append(f"{where}: {e}")
                continue
        problems.append(
            Problem(
                id=str(r.get("unique_id") or f"math/{name}/{i}"),
                question=_field(where, r, "problem").strip(),
                answer=gold,
                solution=solution.strip(),
                level=_math_level(where, r.get("level")),
                subject=str(r.get("type") or r.get("subject") or ""),
                source="math",
            )
        )
    if skipped and not problems:
        raise _fail(
            str(source),
            f"no record has a gold answer ({skipped[0]})",
            "add 'answer' fields or box the final answers in the solutions",
        )
    for reason in skipped:
        logger.warning("skipping a MATH record without a gold answer: %s", reason)
    return problems


# MathCritique release layout (LLaMA-Factory alpaca records), one record's `instruction`:
#   {question} Please also give your final number in the format of '...'
#   \n\nAssistant:{solution}\n<|end_of_text|>\nHuman: {refinement request, one paragraph}
#   \n\n{critique}\n
# and `output` is the refined solution.
_MC_ASSISTANT = "\n\nAssistant:"
_MC_END = "<|end_of_text|>"
_MC_HUMAN = "Human:"
_MC_FORMAT_HINT_RE = re.compile(r"\s*Please also give your final number in the format of .*$", re.S)
_MC_VERDICT = "Correctness of the final answer:"


def load_mathcritique(path: str | Path) -> list[dict[str, str]]:
    """MathCritique records split into question, solution, critique and refinement.

    Split rules (from the released Llama-3-8B GSM8K and MATH files):
    question = text before the first ``"\\n\\nAssistant:"`` without the trailing "Please
    also give your final number in the format of ..." hint; solution = text between
    ``"Assistant:"`` and ``"<|end_of_text|>"``, kept verbatim (it starts with "Let's break
    it down step by step:"); critique = everything after the first paragraph of the
    following ``"Human:"`` turn (that paragraph is the refinement request), which must
    contain a "Correctness of the final answer:" verdict; refinement = ``output``.
    """
    out = []
    for where, r in read_records(path):
        instruction = _field(where, r, "instruction")
        fix = f"keep the MathCritique layout described in {__name__}.load_mathcritique"
        head, sep, rest = instruction.partition(_MC_ASSISTANT)
        if not sep:
            raise _fail(where, f"instruction has no {_MC_ASSISTANT!r} separator", fix)
        solution, sep, rest = rest.partition(_MC_END)
        if not sep:
            raise _fail(where, f"instruction has no {_MC_END!r} after the solution", fix)
        _, sep, rest = rest.partition(_MC_HUMAN)
        if not sep:
            raise _fail(where, f"instruction has no {_MC_HUMAN!r} turn after the solution", fix)
        _, sep, critique = rest.strip().partition("\n\n")
        if not sep or _MC_VERDICT not in critique:
            raise _fail(where, f"no critique with a {_MC_VERDICT!r} line after the request", fix)
        question = _MC_FORMAT_HINT_RE.sub("", head).strip()
        if not question or not solution.strip():
            raise _fail(where, "empty question or solution", fix)
        out.append(
            {
                "question": question,
                "solution": solution.strip(),
                "critique": critique.strip(),
                "refinement": _field(where, r, "output").strip(),
            }
        )
    return out


def _sharegpt(where: str, r: dict[str, Any]) -> list[dict[str, str]]:
    turns = r["conversations"]
    if not isinstance(turns, list) or not turns:
        raise _fail(where, "'conversations' is not a non-empty list", "list the turns in order")
    messages = []
    if isinstance(r.get("system"), str) and r["system"].strip():
        messages.append({"role": "system", "content": r["system"]})
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise _fail(
                where,
                f"turn {k} has no string 'value'",
                "write each turn as {'from': 'human'|'gpt'|'system', 'value': text}",
            )
        role = _SHAREGPT_ROLES.get(str(turn.get("from")).lower())
        if role is None:
            raise _fail(
                where,
                f"turn {k} has unknown 'from' {turn.get('from')!r}",
                f"use one of {sorted(_SHAREGPT_ROLES)}",
            )
        messages.append({"role": role, "content": turn["value"]})
    return messages


def _alpaca(where: str, r: dict[str, Any]) -> list[dict[str, str]]:
    instruction = _field(where, r, "instruction")
    extra = r.get("input") or ""
    if not isinstance(extra, str) or not isinstance(r.get("output"), str):
        raise _fail(where, "'input' and 'output' must be strings", "store text fields as strings")
    messages = []
    if isinstance(r.get("system"), str) and r["system"].strip():
        messages.append({"role": "system", "content": r["system"]})
    for k, pair in enumerate(r.get("history") or []):
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
        ):
            raise _fail(
                where,
                f"history item {k} is not a [user, assistant] pair of strings",
                "write 'history' as [[user_text, assistant_text], ...]",
            )
        messages += [
            {"role": "user", "content": pair[0]},
            {"role": "assistant", "content": pair[1]},
        ]
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": r["output"]}]
    return messages


def _messages(where: str, r: dict[str, Any]) -> list[dict[str, str]]:
    turns = r["messages"]
    roles = ("system", "user", "assistant")
    if (
        not isinstance(turns, list)
        or not turns
        or not all(
            isinstance(t, dict) and t.get("role") in roles and isinstance(t.get("content"), str)
            for t in turns
        )
    ):
        raise _fail(
            where,
            "'messages' is not a non-empty list of {'role', 'content'} turns",
            f"write each turn as {{'role': one of {list(roles)}, 'content': text}}",
        )
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def load_chat_records(path: str | Path) -> list[list[dict[str, str]]]:
    """Chat message lists ``[{"role", "content"}, ...]`` from chat, ShareGPT or Alpaca records.

    Chat (the Hugging Face / OpenAI shape): ``messages`` of ``{"role": system|user|assistant,
    "content"}``. ShareGPT: ``conversations`` of ``{"from": human|gpt|system, "value"}``
    (optional top-level ``system``). Alpaca: ``instruction``, optional ``input`` (appended
    after a blank line), ``output``, optional ``system`` and ``history`` pairs. Formats may mix.
    """
    chats = []
    for where, r in read_records(path):
        if "messages" in r:
            chats.append(_messages(where, r))
        elif "conversations" in r:
            chats.append(_sharegpt(where, r))
        elif "instruction" in r and "output" in r:
            chats.append(_alpaca(where, r))
        else:
            raise _fail(
                where,
                f"neither chat, ShareGPT nor Alpaca (keys: {sorted(r)})",
                "give 'messages' (chat), 'conversations' (ShareGPT) or 'instruction' and "
                "'output' (Alpaca)",
            )
    return chats
