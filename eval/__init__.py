"""The model card's benchmarks, one file each: ``python -m eval --help``."""

from .ceval import CEval
from .gsm8k import GSM8K
from .humaneval import HumanEval
from .ifeval import IFEval
from .math500 import Math500
from .mbpp import MBPP
from .mmlu_pro import MMLUPro
from .tiny_heldout import TinyChoice, TinyMath

# The card's seven (what `python -m eval` runs by default), then the trained tiny checkpoint's
# held-out split (generated, no data files; run by name: --benchmarks tiny_math,tiny_choice).
CARD_BENCHMARKS = {b.name: b for b in (CEval, MMLUPro, IFEval, Math500, GSM8K, HumanEval, MBPP)}
BENCHMARKS = {**CARD_BENCHMARKS, **{b.name: b for b in (TinyMath, TinyChoice)}}
