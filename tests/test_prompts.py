"""Prompt templates and their rendering with and without a chat template."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from critique_jax.data.critique_format import FORMATS
from critique_jax.data.prompts import (
    ANSWER_FORMAT,
    CRITIQUE_INSTRUCTIONS,
    critique_messages,
    insert_error_messages,
    refine_messages,
    render,
    render_example,
    solve_messages,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUESTION = "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts?"
SOLUTION = "White fiber: 2/2 = 1 bolt.\nTotal: 2 + 1 = 4 bolts.\nThe answer is 4."
CRITIQUE = (
    "Step 1 sentence: White fiber: 2/2 = 1 bolt.\nCorrectness of the step: Correct\n"
    "Explanation: Half of 2 is 1.\n"
    "Step 2 sentence: Total: 2 + 1 = 4 bolts.\nCorrectness of the step: Wrong\n"
    "Explanation: 2 + 1 = 3.\n"
    "Correctness of the final answer: Wrong\nExplanation: The total is 3."
)


def make_tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    model = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    model.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, unk_token="[UNK]", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def test_critique_instructions_name_their_format() -> None:
    for line in (
        "Step k sentence:",
        "Correctness of the step: Correct or Wrong",
        "Explanation:",
        "Correctness of the final answer: Correct or Wrong",
        "stop at the first wrong step",
    ):
        assert all(line in text for text in CRITIQUE_INSTRUCTIONS.values())
    verdict_first, reason_first = (CRITIQUE_INSTRUCTIONS[f] for f in FORMATS)
    assert "Check:" not in verdict_first
    check = reason_first.index("Check:")
    assert reason_first.index("Step k sentence:") < check
    assert check < reason_first.index("Correctness of the step:")


def test_critique_prompt_takes_its_format() -> None:
    for fmt in FORMATS:
        [msg] = critique_messages(QUESTION, SOLUTION, fmt=fmt)
        assert msg["content"].endswith(CRITIQUE_INSTRUCTIONS[fmt])
    with pytest.raises(ValueError, match="reason_first"):
        critique_messages(QUESTION, SOLUTION, fmt="verdict_last")


def test_templates_contain_their_inputs_once() -> None:
    [solve] = solve_messages(QUESTION)
    assert solve == {"role": "user", "content": f"{QUESTION}\n\n{ANSWER_FORMAT}"}

    [annotate] = critique_messages(QUESTION, SOLUTION, reference_answer="3")
    assert annotate["role"] == "user"
    for part in (QUESTION, SOLUTION, "Reference answer: 3", CRITIQUE_INSTRUCTIONS["verdict_first"]):
        assert annotate["content"].count(part) == 1
    [critic] = critique_messages(QUESTION, SOLUTION)
    assert "Reference answer" not in critic["content"]

    refine = refine_messages(QUESTION, SOLUTION, CRITIQUE)
    assert [m["role"] for m in refine] == ["user", "assistant", "user"]
    assert refine[0] == solve and refine[1]["content"] == SOLUTION
    assert CRITIQUE in refine[2]["content"] and ANSWER_FORMAT in refine[2]["content"]


def test_prompts_stay_compact() -> None:
    # the demo model has a small context: instructions must not dwarf the content
    for fmt in FORMATS:
        overhead = len(critique_messages("", "", fmt=fmt)[0]["content"])
        assert overhead < 400, (fmt, overhead)
    assert len(ANSWER_FORMAT) < 100


def test_render_with_chat_template() -> None:
    tokenizer = make_tokenizer(CHATML)
    messages = solve_messages(QUESTION)
    text = render(tokenizer, messages)
    assert (
        text
        == f"<|im_start|>user\n{QUESTION}\n\n{ANSWER_FORMAT}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not render(tokenizer, messages, add_generation_prompt=False).endswith("assistant\n")

    prompt, completion = render_example(tokenizer, messages, SOLUTION)
    assert prompt == text
    # the end-of-turn marker is trained on; the template's trailing newline after it is not
    assert completion == SOLUTION + "<|im_end|>"
    # a template whose turns end in something other than EOS keeps its text as rendered
    other_end = make_tokenizer(CHATML.replace("<|im_end|>\n{% endfor", "[END]\n{% endfor"))
    assert render_example(other_end, messages, SOLUTION)[1] == SOLUTION + "[END]\n"


def test_render_without_chat_template() -> None:
    for tokenizer in (make_tokenizer(None), None):
        messages = refine_messages(QUESTION, SOLUTION, CRITIQUE)
        text = render(tokenizer, messages)
        assert text.startswith(f"User: {QUESTION}\n\n")
        assert f"\n\nAssistant: {SOLUTION}\n\nUser: A critique" in text
        assert text.endswith(f"{ANSWER_FORMAT}\n\nAssistant: ")
        assert render(tokenizer, messages, add_generation_prompt=False) + "Assistant: " == text

    prompt, completion = render_example(make_tokenizer(None), solve_messages(QUESTION), SOLUTION)
    assert prompt.endswith("Assistant: ") and completion == SOLUTION + "<|im_end|>"
    assert render_example(None, solve_messages(QUESTION), SOLUTION)[1] == SOLUTION


def test_render_errors() -> None:
    with pytest.raises(ValueError, match="unknown message role 'tool'"):
        render(None, [{"role": "tool", "content": "x"}])
    # a template that drops earlier turns once an assistant reply exists
    last_only = (
        "{% if add_generation_prompt %}{{ messages[-1]['content'] }}|{% else %}"
        "{{ messages[-1]['content'] }}{% endif %}"
    )
    with pytest.raises(ValueError, match="not a prefix"):
        render_example(make_tokenizer(last_only), solve_messages(QUESTION), SOLUTION)


def test_insert_error_prompt_holds_the_steps_before_k() -> None:
    (msg,) = insert_error_messages("Q?", ["Step 1: 2 + 3 = 5"], 2)
    assert "Step 1: 2 + 3 = 5" in msg["content"] and "step 2" in msg["content"]
    assert "The answer is X." in msg["content"]
