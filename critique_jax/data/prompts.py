"""Prompt templates for solving, critiquing, refining and error insertion, and their rendering.

Every stage (sampling, critic SFT, RCO, refinement, self-training) builds its prompts
here so that training and inference see identical text. Instructions are kept short:
the demo models have small contexts. Messages use only the user and assistant roles,
which every chat template accepts (some reject a system role).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from critique_jax.data.critique_format import CritiqueFormat, check_format

# How every solution must end, so that ``extract_answer`` finds its final answer.
ANSWER_FORMAT = 'Solve step by step, one step per line. End with "The answer is X."'

# The step-level critique formats (data/critique_format.py), one instruction each, shared by
# the critic prompt and whatever parses critiques; the annotator and the critic see the
# same wording.
CRITIQUE_INSTRUCTIONS: dict[CritiqueFormat, str] = {
    "verdict_first": """Check the solution step by step. For each step k write:
Step k sentence: <the step>
Correctness of the step: Correct or Wrong
Explanation: <why>
You may stop at the first wrong step. Then write:
Correctness of the final answer: Correct or Wrong
Explanation: <why>""",
    "reason_first": """Check the solution step by step. For each step k write:
Step k sentence: <the step>
Check: <redo the step from the question and the earlier steps>
Correctness of the step: Correct or Wrong
You may stop at the first wrong step. Then write:
Correctness of the final answer: Correct or Wrong
Explanation: <why>""",
}

# Used when the tokenizer has no chat template: "User: ...\n\nAssistant: ...\n\n".
FALLBACK_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}

Messages = list[dict[str, str]]


def solve_messages(question: str) -> Messages:
    """Ask the actor for a step-by-step solution ending in "The answer is X."."""
    return [{"role": "user", "content": f"{question.strip()}\n\n{ANSWER_FORMAT}"}]


def critique_messages(
    question: str,
    solution: str,
    reference_answer: str | None = None,
    fmt: CritiqueFormat = "verdict_first",
) -> Messages:
    """Ask a critic for a step-level critique of ``solution`` in format ``fmt``.

    ``reference_answer`` is for the annotator in AutoMathCritique, which critiques knowing
    the gold answer; a critic being trained or used at test time gets none.
    """
    check_format(fmt)
    parts = [f"Question: {question.strip()}", f"Solution:\n{solution.strip()}"]
    if reference_answer is not None:
        parts.append(f"Reference answer: {reference_answer.strip()}")
    parts.append(CRITIQUE_INSTRUCTIONS[fmt])
    return [{"role": "user", "content": "\n\n".join(parts)}]


def refine_messages(question: str, solution: str, critique: str) -> Messages:
    """Ask the actor to rewrite its solution using a critique.

    A continued conversation, as in the MathCritique data: the actor's own solve turn,
    then the critique as the next user turn.
    """
    return [
        *solve_messages(question),
        {"role": "assistant", "content": solution.strip()},
        {
            "role": "user",
            "content": f"A critique of your solution:\n{critique.strip()}\n\n"
            f"Write a corrected solution. {ANSWER_FORMAT}",
        },
    ]


def insert_error_messages(question: str, steps_before: Sequence[str], step: int) -> Messages:
    """Ask an annotator to continue a correct solution from step `step` with a mistake there.

    The steps before `step` come from a correct solution, so the first error of the result is
    at `step` when the annotator follows the instruction (the verifier then checks that the
    final answer is indeed wrong).
    """
    parts = [f"Question: {question.strip()}"]
    if steps_before:
        parts.append(
            f"The first {step - 1} steps of a correct solution:\n"
            + "\n".join(s.strip() for s in steps_before)
        )
    parts.append(
        f"Write step {step} with one plausible mistake in it (a wrong calculation, a misread "
        "number or a wrong formula), then finish the solution consistently with that mistake, "
        f"without pointing it out. Write only step {step} onward. {ANSWER_FORMAT}"
    )
    return [{"role": "user", "content": "\n\n".join(parts)}]


def _has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def _fallback(messages: Messages) -> str:
    for m in messages:
        if m.get("role") not in FALLBACK_ROLES:
            raise ValueError(
                f"unknown message role {m.get('role')!r}; use one of {sorted(FALLBACK_ROLES)}"
            )
    return "".join(f"{FALLBACK_ROLES[m['role']]}: {m['content']}\n\n" for m in messages)


def render(tokenizer: Any, messages: Messages, add_generation_prompt: bool = True) -> str:
    """Prompt text for ``messages``.

    With a chat template: ``tokenizer.apply_chat_template(..., tokenize=False)``. Without
    one (base models, ``tokenizer=None``): each message as ``"Role: content\\n\\n"`` with
    roles System/User/Assistant, then ``"Assistant: "`` when a generation prompt is asked
    for. The text may already hold special tokens such as BOS, so tokenize it with
    ``add_special_tokens=False``.
    """
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    text = _fallback(messages)
    return text + "Assistant: " if add_generation_prompt else text


def render_example(tokenizer: Any, messages: Messages, completion: str) -> tuple[str, str]:
    """(prompt_text, completion_text) of one SFT example; the loss covers the completion.

    The completion text carries its end-of-turn marker so the model learns to stop: what
    the chat template writes after the assistant message (e.g. ``<|im_end|>``), or the
    tokenizer's EOS token in the plain fallback. Whitespace the template puts after the
    EOS token is dropped, so the text ends on EOS and ``batching.tokenize_example`` does
    not append a second one.
    """
    prompt = render(tokenizer, messages, add_generation_prompt=True)
    eos = getattr(tokenizer, "eos_token", None) or ""
    if not _has_chat_template(tokenizer):
        return prompt, completion + eos
    full = render(
        tokenizer,
        [*messages, {"role": "assistant", "content": completion}],
        add_generation_prompt=False,
    )
    if not full.startswith(prompt):
        raise ValueError(
            "The chat template renders the conversation differently with and without the "
            "final assistant turn, so the prompt is not a prefix of the full example. Fix: "
            "use a template whose generation prompt is a prefix of the rendered reply."
        )
    text = full[len(prompt) :]
    if eos and text.rstrip().endswith(eos):
        text = text.rstrip()
    return prompt, text
