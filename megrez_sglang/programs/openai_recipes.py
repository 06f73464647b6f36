"""The same format guarantees for plain openai-client users of the server (launch_server.sh).

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:30000/v1", api_key=...)
    math = openai_math(client, "megrez-moe", "1+1=?")          # .reasoning, .answer, .text
    mc = openai_choice(client, "megrez-moe", "Which ...?", ["...", "...", "..."])   # .letter

Math takes two requests: free reasoning stopped at the model's own ``\\boxed`` (or the budget),
then the same conversation continued (SGLang's ``continue_final_message``) under the ``\\boxed``
regex (``extra_body={"regex": ...}``). Multiple choice is one request with ``response_format`` =
a JSON schema whose ``answer`` is an enum of the item's letters.
"""

from __future__ import annotations

import json

from ..answers import last_boxed
from ..prompts import choice_prompt, math_prompt, option_letters
from .choice import ChoiceResult
from .grammars import BOXED_MAX_TOKENS, BOXED_REGEX, answer_json_schema
from .math import MathResult

CARD_SAMPLING = {"temperature": 0.7, "top_p": 0.9}


def boxed_math_reply(client, model: str, messages: list[dict], *, reasoning_max_tokens: int = 512,
                     **sampling) -> MathResult:
    """Reasoning, then the final answer under the \\boxed regex, for any conversation."""
    sampling = {**CARD_SAMPLING, **sampling}
    first = client.chat.completions.create(model=model, messages=messages, stop=["\\boxed"],
                                           max_tokens=reasoning_max_tokens, **sampling)
    reasoning = first.choices[0].message.content or ""
    extra = {"regex": BOXED_REGEX, "continue_final_message": True, **sampling.pop("extra_body", {})}
    second = client.chat.completions.create(
        model=model, messages=messages + [{"role": "assistant", "content": reasoning}],
        max_tokens=BOXED_MAX_TOKENS, extra_body=extra, **sampling)
    boxed = second.choices[0].message.content or ""
    return MathResult(reasoning, last_boxed(boxed), reasoning + boxed,
                      first.usage.completion_tokens + second.usage.completion_tokens)


def choice_reply(client, model: str, messages: list[dict], letters, **sampling) -> ChoiceResult:
    """The answer object, its letter restricted to `letters` by a JSON schema."""
    sampling = {**CARD_SAMPLING, **sampling}
    r = client.chat.completions.create(
        model=model, messages=messages, max_tokens=32, **sampling,
        response_format={"type": "json_schema", "json_schema": {
            "name": "choice", "schema": answer_json_schema(list(letters)), "strict": True}})
    text = r.choices[0].message.content or ""
    return ChoiceResult(json.loads(text)["answer"], "", text, r.usage.completion_tokens)


def openai_math(client, model: str, question: str, *, lang: str = "zh",
                reasoning_max_tokens: int = 512, **sampling) -> MathResult:
    return boxed_math_reply(client, model, [{"role": "user", "content": math_prompt(question, lang)}],
                            reasoning_max_tokens=reasoning_max_tokens, **sampling)


def openai_choice(client, model: str, question: str, options, *, lang: str = "zh", **sampling) -> ChoiceResult:
    return choice_reply(client, model, [{"role": "user", "content": choice_prompt(question, options, lang)}],
                        option_letters(options), **sampling)
