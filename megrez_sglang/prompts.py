"""The prompt texts (instructions, templates, system prompt) live as data files in prompts/."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

# The repository's prompts/ folder; MEGREZ_PROMPTS_DIR points elsewhere (e.g. a translated set).
PROMPTS_DIR = Path(os.environ.get("MEGREZ_PROMPTS_DIR") or Path(__file__).resolve().parents[1] / "prompts")


@cache
def load_prompt(name: str) -> str:
    """The text of prompts/<name>.txt, without its final newline."""
    path = PROMPTS_DIR / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))
        raise FileNotFoundError(f"no prompt {name!r}: {path} does not exist (known: {known})")
    return path.read_text(encoding="utf-8").removesuffix("\n")
