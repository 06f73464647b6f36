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


def openai_math(client, model: str, question: str, *, lang: str = "zh",
                reasoning_max_tokens: int = 512, **sampling) -> MathResult:
    sampling = {**CARD_SAMPLING, **sampling}
    messages = [{"role": "user", "content": math_prompt(question, lang)}]
    first = client.chat.completions.create(model=model, messages=messages, stop=["\\boxed"],
                                           max_tokens=reasoning_max_tokens, **sampling)
    reasoning = first.choices[0].message.content or ""
    second = client.chat.completions.create(
        model=model, messages=messages + [{"role": "assistant", "content": reasoning}],
        max_tokens=BOXED_MAX_TOKENS, extra_body={"regex": BOXED_REGEX, "continue_final_message": True},
        **sampling)
    boxed = second.choices[0].message.content or ""
    return MathResult(reasoning, last_boxed(boxed), reasoning + boxed,
                      first.usage.completion_tokens + second.usage.completion_tokens)


def openai_choice(client, model: str, question: str, options, *, lang: str = "zh", **sampling) -> ChoiceResult:
    sampling = {**CARD_SAMPLING, **sampling}
    r = client.chat.completions.create(
        model=model, max_tokens=32, **sampling,
        messages=[{"role": "user", "content": choice_prompt(question, options, lang)}],
        response_format={"type": "json_schema", "json_schema": {
            "name": "choice", "schema": answer_json_schema(option_letters(options)), "strict": True}})
    text = r.choices[0].message.content or ""
    return ChoiceResult(json.loads(text)["answer"], "", text)
