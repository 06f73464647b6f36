"""What produced a result: package versions and the git revision, for eval runs and benchmark
records (one place, so that both record the same things)."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("megrez-sglang", "sglang", "sglang-router", "transformers", "torch", "openai",
            "xgrammar", "outlines", "llguidance", "flashinfer-python", "math-verify", "if-verifiable")


def package_versions(packages=PACKAGES) -> dict[str, str]:
    """{distribution: version} for those installed."""
    out = {}
    for package in packages:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            pass
    return out


def git_revision(where: str | Path | None = None) -> str | None:
    """The commit checked out at `where` (default: this package's checkout), with "-dirty" when
    the work tree has changes; None outside a git checkout (an installed package)."""
    cwd = Path(where or Path(__file__).parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return commit.stdout.strip() + ("-dirty" if dirty else "")
