"""SGLang frontend-language programs that enforce the model card's output formats.

* math (math.py): reasoning, then the final answer forced into ``\\boxed{...}``;
* multiple choice (choice.py): reasoning within a budget (0: none), then ``{"answer": "<L>"}``
  with L one of the item's letters;
* chat format (chat_template.py): the served checkpoint's own chat template, for SGLang's lookup;
* self-consistency for both (k forked samples sharing the prompt, majority vote), batch runners;
* backends (backends.py): a running server, or ``sgl.Runtime`` in-process;
* the same constraints for openai-client users (openai_recipes.py);
* answer extraction from free text, math equivalence and majority vote (answers.py), shared
  with the evaluation and the tiny model's training.

The prompts they send are the model's (model/prompts.py): the checkpoint's chat template bakes
in the default system prompt, so they sit below this package.
"""

from .backends import endpoint, runtime
from .choice import (
                     ChoiceResult,
                     ChoiceVote,
                     answer_choice,
                     answer_choice_batch,
                     answer_choice_self_consistent,
)
from .grammars import BOXED_EBNF, BOXED_REGEX, answer_json_regex, answer_json_schema, boxed_constraint
from .math import MathResult, MathVote, solve_math, solve_math_batch, solve_math_self_consistent

__all__ = [
    "endpoint", "runtime", "BOXED_REGEX", "BOXED_EBNF", "boxed_constraint", "answer_json_regex",
    "answer_json_schema",
    "MathResult", "MathVote", "solve_math", "solve_math_batch", "solve_math_self_consistent",
    "ChoiceResult", "ChoiceVote", "answer_choice", "answer_choice_batch",
    "answer_choice_self_consistent",
]
