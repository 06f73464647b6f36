"""Checking a model path before SGLang sees it, so that mistakes get one clear line."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .config import MegrezMoeConfig

# Written by the project's checkpoint builders: {"weights": "random" | "trained", ...}.
PROVENANCE_FILE = "megrez_sglang.json"


class ModelPathError(ValueError):
    """The given model path is missing or is not a Megrez2 checkpoint."""


# The tiny Megrez2 trained here (python -m megrez_sglang.training.train_tiny), shipped with the package:
# it answers the card's demos and the held-out split (eval: tiny_math, tiny_choice).
TRAINED_CHECKPOINT = Path(__file__).parents[1] / "checkpoints" / "tiny-trained"


def resolve_model_path(model_path: str | None, *, need_weights: bool = True) -> str:
    """A local Megrez2 checkpoint directory: `model_path`, a hub id downloaded where the machine
    is online, or (None) the project's trained tiny checkpoint (shipped in the package)."""
    if model_path is None:
        if not (TRAINED_CHECKPOINT / "config.json").is_file():
            raise ModelPathError(f"the trained tiny checkpoint is missing: {TRAINED_CHECKPOINT} has no "
                                 "config.json (rebuild it with python -m megrez_sglang.training.train_tiny)")
        return str(TRAINED_CHECKPOINT)
    path = Path(model_path).expanduser()
    if not path.exists():
        if re.fullmatch(r"[\w.-]+/[\w.-]+", model_path) and not model_path.startswith("."):
            path = _download(model_path)
        else:
            raise ModelPathError(f"model path {model_path!r} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelPathError(f"{model_path!r} is not a model checkpoint: no config.json in {path}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelPathError(f"{config_file} is not valid JSON: {e}") from None
    if (config.get("model_type") != "megrez_moe"
            or "MegrezMoeForCausalLM" not in config.get("architectures", [])):
        raise ModelPathError(
            f"{model_path!r} is not a Megrez2 checkpoint: config.json has model_type "
            f"{config.get('model_type')!r} and architectures {config.get('architectures')}, "
            "expected 'megrez_moe' / ['MegrezMoeForCausalLM']"
        )
    try:  # the check SGLang's config loading runs too, but there it ends in a traceback
        MegrezMoeConfig(**config)
    except (ValueError, TypeError) as e:  # TypeError: a field of the wrong JSON type
        raise ModelPathError(f"{config_file}: {e}") from None
    if need_weights and not list(path.glob("*.safetensors")):
        raise ModelPathError(f"{model_path!r} has no *.safetensors weights (a config-only checkpoint?)")
    if need_weights and has_random_weights(path):
        print(f"megrez_sglang: note: {path} holds random weights (built by "
              "megrez_sglang.model.build_checkpoint): what it generates is noise, not answers",
              file=sys.stderr)
    return str(path)


def has_random_weights(path: str | Path) -> bool:
    """Whether the checkpoint is one of the project's random-weight builds."""
    try:
        provenance = json.loads((Path(path) / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return provenance.get("weights") == "random"


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id))
    except Exception as e:  # offline, unknown repo, gated...
        raise ModelPathError(f"model path {repo_id!r} does not exist locally and could not be "
                             f"downloaded from the Hugging Face hub ({type(e).__name__})") from None
