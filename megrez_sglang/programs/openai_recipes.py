"""The same format guarantees for plain openai-client users of the server (launch_server.sh).

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:30000/v1", api_key=...)
    math = openai_math(client, "megrez-moe", "1+1=?")          # .reasoning, .answer, .text
    mc = openai_choice(client, "megrez-moe", "Which ...?", ["...", "...", "..."])   # .letter

Both reason first and then continue the same conversation (SGLang's ``continue_final_message``)
under a constraint, as the frontend-language programs do:

* math: free reasoning stopped at the model's own ``\\boxed`` (or the budget), then the box under
  the server's grammar backend's form of it (``boxed_constraint``: the recursive EBNF on xgrammar
  and llguidance, the finite regex on outlines) in ``extra_body``;
* multiple choice: free reasoning stopped where the model starts its own answer object (or the
  budget), then the object (or its rest, after the model's own opening brace) under the answer
  regex with only the item's letters. ``reasoning_max_tokens=0`` (or a model that answers at
  once) is one request with ``response_format`` = a JSON schema whose ``answer`` is an enum of the
  item's letters.

``on_text``: a callable that receives the reply's text piece by piece as it is generated (the
requests are then streamed); the result is the same (the demo page shows the reasoning live).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache

from ..model.prompts import choice_prompt, math_prompt, option_letters
from .choice import (
    ANSWER_MAX_TOKENS,
    REASONING_MAX_TOKENS,
    REASONING_STOPS,
    ChoiceResult,
    answer_letter,
    reasoning_before_the_answer_object,
)
from .grammars import BOXED_MAX_TOKENS, answer_json_regex, answer_json_schema, boxed_constraint
from .math import MathResult, box_content

CARD_SAMPLING = {"temperature": 0.7, "top_p": 0.9}


@cache
def _grammar_backend(base_url: str, api_key: str) -> str | None:
    import requests

    try:
        r = requests.get(f"{base_url}/server_info", timeout=10,
                         headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        return r.json().get("grammar_backend") if r.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def server_grammar_backend(client) -> str | None:
    """The grammar backend of the SGLang server behind `client` (its /server_info), or None when
    the server does not say (then the regex form, which every backend compiles, is used)."""
    root = str(client.base_url).rstrip("/").removesuffix("/v1")
    return _grammar_backend(root, client.api_key)


TextSink = Callable[[str], None]


def chat_text(client, on_text: TextSink | None, **request) -> tuple[str, int]:
    """One chat request's reply text and completion tokens; streamed when `on_text` is given,
    which then receives each piece of text as it arrives (usage: the stream's last chunk)."""
    if on_text is None:
        r = client.chat.completions.create(**request)
        return r.choices[0].message.content or "", r.usage.completion_tokens
    text, tokens = [], 0
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                **request):
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
            on_text(text[-1])
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return "".join(text), tokens


def _continue(client, model, messages, reasoning, on_text: TextSink | None = None, **kwargs):
    """The assistant turn `reasoning` continued (not a new turn): its text and completion tokens."""
    extra = {"continue_final_message": True, **kwargs.pop("extra_body", {})}
    return chat_text(client, on_text, model=model,
                     messages=messages + [{"role": "assistant", "content": reasoning}],
                     extra_body=extra, **kwargs)


def boxed_math_reply(client, model: str, messages: list[dict], *, reasoning_max_tokens: int = 512,
                     grammar_backend: str | None = None, on_text: TextSink | None = None,
                     **sampling) -> MathResult:
    """Reasoning, then the final answer forced into \\boxed{...}, for any conversation.
    `grammar_backend`: the server's (asked from the server when not given)."""
    sampling = {**CARD_SAMPLING, **sampling}
    reasoning, reasoning_tokens = chat_text(client, on_text, model=model, messages=messages,
                                            stop=["\\boxed"], max_tokens=reasoning_max_tokens, **sampling)
    constraint = boxed_constraint(grammar_backend or server_grammar_backend(client))
    extra = {**constraint, **sampling.pop("extra_body", {})}
    boxed, boxed_tokens = _continue(client, model, messages, reasoning, on_text, max_tokens=BOXED_MAX_TOKENS,
                                    extra_body=extra, **sampling)
    return MathResult(reasoning, box_content(boxed), reasoning + boxed, reasoning_tokens + boxed_tokens)


def choice_reply(client, model: str, messages: list[dict], letters, *,
                 reasoning_max_tokens: int = REASONING_MAX_TOKENS, on_text: TextSink | None = None,
                 **sampling) -> ChoiceResult:
    """Reasoning within `reasoning_max_tokens`, then the answer object, its letter restricted to
    `letters` (by the answer regex after reasoning, by a JSON schema without)."""
    sampling = {**CARD_SAMPLING, **sampling}
    schema = {"type": "json_schema", "json_schema": {
        "name": "choice", "schema": answer_json_schema(list(letters)), "strict": True}}
    reasoning, tokens = "", 0
    if reasoning_max_tokens > 0:
        reasoning, tokens = chat_text(client, on_text, model=model, messages=messages, stop=REASONING_STOPS,
                                      max_tokens=reasoning_max_tokens, **sampling)
    # A brace the model opened goes and the grammar writes the whole object (see choice.py's stops)
    reasoning = reasoning_before_the_answer_object(reasoning)
    if reasoning.strip():
        regex = answer_json_regex(list(letters))
        text, answer_tokens = _continue(
            client, model, messages, reasoning, on_text, max_tokens=ANSWER_MAX_TOKENS,
            extra_body={"regex": regex, **sampling.pop("extra_body", {})}, **sampling)
        letter = answer_letter(text)
    else:  # no reasoning asked for, or the model went straight to its answer
        text, answer_tokens = chat_text(client, on_text, model=model, messages=messages,
                                        max_tokens=ANSWER_MAX_TOKENS, response_format=schema, **sampling)
        letter = json.loads(text)["answer"]
    return ChoiceResult(letter, reasoning, reasoning + text, tokens + answer_tokens)


def openai_math(client, model: str, question: str, *, lang: str = "zh",
                reasoning_max_tokens: int = 512, **sampling) -> MathResult:
    return boxed_math_reply(client, model, [{"role": "user", "content": math_prompt(question, lang)}],
                            reasoning_max_tokens=reasoning_max_tokens, **sampling)


def openai_choice(client, model: str, question: str, options, *, lang: str = "zh",
                  **sampling) -> ChoiceResult:
    """`sampling` may set reasoning_max_tokens (0: the answer object directly)."""
    return choice_reply(client, model, [{"role": "user", "content": choice_prompt(question, options, lang)}],
                        option_letters(options), **sampling)
