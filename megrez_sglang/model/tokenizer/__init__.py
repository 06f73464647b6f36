"""A Megrez-style tokenizer trained here, since the real one cannot be downloaded on these machines.

Like Megrez-3B's (which Megrez2 reuses): byte-level BPE with Qwen2's pre-tokenisation (digits one
by one, letters in runs, punctuation apart), Megrez's special tokens after the regular vocabulary,
eos ``<|turn_end|>``, no BOS, and the Megrez chat format. It is trained with the ``tokenizers``
library on the text in ``corpus/`` plus generated digits, LaTeX and JSON, deterministically.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ..prompts import load_prompt

CORPUS_DIR = Path(__file__).with_name("corpus")
CHAT_TEMPLATE_FILE = Path(__file__).with_name("chat_template.jinja")

# Megrez-3B's special tokens, in its order (there at ids 120000-120007).
SPECIAL_TOKENS = [
    "<|eos|>", "<|unk|>", "<|pad|>", "<|role_start|>",
    "<|role_end|>", "<|turn_end|>", "<|code_start|>", "<|code_end|>",
]
EOS_TOKEN, UNK_TOKEN, PAD_TOKEN = "<|turn_end|>", "<|unk|>", "<|pad|>"
STOP_TOKENS = ["<|turn_end|>", "<|eos|>"]

QWEN2_PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def generated_text(seed: int = 0) -> list[str]:
    """Digits, LaTeX and JSON the corpus is too small to teach: answers, formulas, options."""
    rng = random.Random(seed)
    lines = []
    for _ in range(400):
        a, b = rng.randint(0, 9999), rng.randint(1, 999)
        lines += [
            f"{a} + {b} = {a + b}", f"{a} \\times {b} = {a * b}", f"{a:,}",
            f"\\boxed{{{a}}}", f"\\boxed{{\\frac{{{a}}}{{{b}}}}}", f"\\frac{{{b}}}{{{a + 1}}}",
            f"$x^{{{b % 9 + 2}}} + \\sqrt{{{a}}}$", f"\\(\\dfrac{{{a}}}{{{b}}}\\)",
            f'{{"answer": "{"ABCDEFGHIJ"[a % 10]}"}}', f'"answer": "{"ABCD"[b % 4]}"',
            f'{{"name": "item{b}", "value": {a}, "ok": {"true" if a % 2 else "false"}}}',
            f"{a}.{b:03d}", f"-{b}", f"{a % 100}%",
        ]
    for env in ("\\begin{align}", "\\end{align}", "\\left(", "\\right)", "\\cdot", "\\pi",
                "\\alpha", "\\beta", "\\infty", "\\sum_{i=1}^{n}", "\\int_0^1", "\\leq", "\\geq"):
        lines += [env] * 20
    return lines


def training_text() -> list[str]:
    lines = []
    for path in sorted(CORPUS_DIR.glob("*.txt")):
        lines += path.read_text(encoding="utf-8").splitlines()
    # Repeat the corpus so that frequent Chinese characters and English words become tokens.
    return lines * 8 + generated_text()


def train_tokenizer(vocab_size: int, texts: list[str] | None = None) -> Tokenizer:
    """Byte-level BPE of at most `vocab_size` regular tokens, then the special tokens; trained on
    `texts` (default: the corpus in corpus/ plus generated digits, LaTeX and JSON)."""
    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text() if texts is None else texts, trainer=trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    return tokenizer


def chat_template() -> str:
    """The Megrez chat template, with the default system prompt from prompts/ filled in."""
    template = CHAT_TEMPLATE_FILE.read_text(encoding="utf-8")
    return template.replace("__DEFAULT_SYSTEM_PROMPT__", json.dumps(load_prompt("system_default")))


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int) -> None:
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=None,
        chat_template=chat_template(),
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out_dir))
