"""SGLang frontend-language programs that enforce the model card's output formats.

* math (math.py): reasoning, then the final answer forced into ``\\boxed{...}``;
* multiple choice (choice.py): optional reasoning, then ``{"answer": "<L>"}`` with L one of the
  item's letters;
* self-consistency for both (k forked samples sharing the prompt, majority vote), batch runners;
* backends (backends.py): a running server, or ``sgl.Runtime`` in-process;
* the same constraints for openai-client users (openai_recipes.py).
"""

from .backends import endpoint, runtime
from .choice import (
                     ChoiceResult,
                     ChoiceVote,
                     answer_choice,
                     answer_choice_batch,
                     answer_choice_self_consistent,
)
from .grammars import BOXED_REGEX, answer_json_regex, answer_json_schema
from .math import MathResult, MathVote, solve_math, solve_math_batch, solve_math_self_consistent

__all__ = [
    "endpoint", "runtime", "BOXED_REGEX", "answer_json_regex", "answer_json_schema",
    "MathResult", "MathVote", "solve_math", "solve_math_batch", "solve_math_self_consistent",
    "ChoiceResult", "ChoiceVote", "answer_choice", "answer_choice_batch",
    "answer_choice_self_consistent",
]
