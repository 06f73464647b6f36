"""Fixtures of the hardening tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def vocab_size(tiny_checkpoint) -> int:
    return json.loads((Path(tiny_checkpoint) / "config.json").read_text())["vocab_size"]
