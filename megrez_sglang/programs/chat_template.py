"""The Megrez chat format for SGLang's frontend language.

The frontend language formats ``sgl.system/user/assistant`` with its own chat-template registry,
whose fallback ("default") is not Megrez's format. This registers the same format the tokenizer's
Jinja template renders for /v1/chat/completions (default system prompt from prompts/ included),
and a matching function that recognises Megrez2 checkpoints by their config.json.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from sglang.lang.chat_template import (
    ChatTemplate,
    register_chat_template,
    register_chat_template_matching_function,
)

from ..prompts import load_prompt

NAME = "megrez"


def megrez_chat_template() -> ChatTemplate:
    def role(name: str) -> tuple[str, str]:
        return (f"<|role_start|>{name}<|role_end|>", "<|turn_end|>")

    return ChatTemplate(
        name=NAME,
        default_system_prompt=load_prompt("system_default"),
        role_prefix_and_suffix={"system": role("system"), "user": role("user"),
                                "assistant": role("assistant")},
        stop_str=("<|turn_end|>", "<|eos|>"),
    )


@cache
def _is_megrez_checkpoint(model_path: str) -> bool:
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return "megrez" in str(model_path).lower()
    return config.get("model_type") == "megrez_moe"


def _match_megrez(model_path: str):
    return NAME if _is_megrez_checkpoint(model_path) else None


register_chat_template(megrez_chat_template())
register_chat_template_matching_function(_match_megrez)
