"""The output-format constraints under each of SGLang's grammar backends (engine, CPU)."""

import json
import re

import pytest
from tokenizers import Tokenizer

from megrez_sglang.programs.grammars import (
    BOXED_EBNF,
    BOXED_MAX_TOKENS,
    BOXED_REGEX,
    UnsupportedConstraint,
    answer_json_regex,
    answer_json_schema,
    boxed_constraint,
    require_support,
)

from .test_programs import is_boxed_answer

PROMPTS = ["1 + 1 =", "答案：", "The final answer is", "世界上最高的山峰是"]
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 256}
# The box's regex bounds its characters, so this many tokens always reach the closing brace.
BOXED_SAMPLING = {**SAMPLING, "max_new_tokens": BOXED_MAX_TOKENS}


@pytest.fixture(params=["xgrammar", "outlines", "llguidance"])
def grammar_engine(request, engines, tiny_checkpoint):
    engine = engines.get(tiny_checkpoint, grammar_backend=request.param,
                         constrained_json_disable_any_whitespace=True)
    return request.param, engine


def test_regex_json_schema_and_ebnf_per_backend(grammar_engine, tiny_checkpoint):
    name, engine = grammar_engine
    boxed = engine.generate(PROMPTS, {**BOXED_SAMPLING, "regex": BOXED_REGEX})
    second_stop_id = Tokenizer.from_file(f"{tiny_checkpoint}/tokenizer.json").token_to_id("<|eos|>")
    assert second_stop_id is not None
    for o in boxed:
        if name == "outlines" and o["meta_info"]["finish_reason"].get("matched") == second_stop_id:
            # KNOWN DEFECT, not fixed (docs/structured-output.md): outlines masks as special only
            # the tokenizer's named special tokens (all_special_tokens: <|turn_end|>, <|pad|>,
            # <|unk|>), so the second stop token <|eos|> is to it seven ordinary characters the box
            # may hold; SGLang then stops on it (generation_config's eos_token_id) inside the box.
            # Random weights: 8 of 384 boxes, every one an open box stopped on <|eos|>.
            assert is_open_box(o["text"]), o["text"]
        elif o["meta_info"]["finish_reason"]["type"] == "length":
            # BOXED_MAX_TOKENS assumes a token spells at least one character; a byte-level token can
            # spell a third of a CJK character, so random weights sampling byte tokens can run out of
            # tokens inside the box (seen once in a full run, 3 prompts of 4, outlines). What was
            # written is still a box's start; the budget's arithmetic is a known defect
            # (docs/structured-output.md).
            assert is_open_box(o["text"]), o["text"]
        else:
            assert is_boxed_answer(o["text"]), o["text"]
    letters = ["B", "D", "F"]
    regex = engine.generate(PROMPTS, {**SAMPLING, "regex": answer_json_regex(letters)})
    assert all(json.loads(o["text"])["answer"] in letters for o in regex)
    schema = engine.generate(PROMPTS, {**SAMPLING, "json_schema": json.dumps(answer_json_schema(letters))})
    assert all(set(json.loads(o["text"])) == {"answer"} and json.loads(o["text"])["answer"] in letters
               for o in schema)
    if name == "outlines":
        with pytest.raises(UnsupportedConstraint, match="outlines grammar backend cannot compile ebnf"):
            require_support(name, "ebnf")
        with pytest.raises(ValueError, match="Failed to compile ebnf grammar"):  # SGLang's own error
            engine.generate(PROMPTS[0], {**SAMPLING, "ebnf": BOXED_EBNF})
    else:
        require_support(name, "ebnf")
        assert boxed_constraint(name) == {"ebnf": BOXED_EBNF}
        ebnf = engine.generate(PROMPTS, {**BOXED_SAMPLING, "ebnf": BOXED_EBNF})
        for o in ebnf:
            if o["meta_info"]["finish_reason"]["type"] == "length":
                # Recursion bounds each level, not the depth: random weights can nest past the
                # token budget (about 1 box in 40 here). What was written is still a box's start.
                assert is_open_box(o["text"]), o["text"]
            else:
                assert is_boxed_answer(o["text"]), o["text"]


def is_open_box(text: str) -> bool:
    """A box cut off before its end: \\boxed{ then one line whose braces never close it."""
    depth = 1
    for ch in text[len("\\boxed{"):]:
        depth += (ch == "{") - (ch == "}")
        if depth <= 0:
            return False
    return text.startswith("\\boxed{") and not re.search(r"[\x00-\x1f]", text)


def test_an_invalid_regex_is_a_clear_error(engines, tiny_checkpoint):
    engine = engines.get(tiny_checkpoint, grammar_backend="xgrammar",
                         constrained_json_disable_any_whitespace=True)
    with pytest.raises(ValueError, match="Failed to compile regex"):
        engine.generate("x", {"max_new_tokens": 4, "regex": "[a-"})
    assert engine.generate("x", {"max_new_tokens": 4, "regex": "[a-c]"})["text"] in ("a", "b", "c")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown grammar backend 'lmformat'"):
        require_support("lmformat", "regex")
