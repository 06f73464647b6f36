"""The README describes the repository as it is: its layout block, its test command."""

import re
import subprocess

import pytest

from .conftest import ROOT

README = (ROOT / "README.md").read_text()


def layout_entries() -> list[str]:
    """Paths named in the README's layout block (two spaces of indent per folder level)."""
    block = README.split("## Layout", 1)[1].split("```", 2)[1]
    paths, parents = [], []
    for line in filter(str.strip, block.splitlines()):
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        del parents[depth:]
        paths.append("".join(parents) + name)
        if name.endswith("/"):
            parents.append(name)
    return paths


def tracked() -> list[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout: no list of tracked files to compare the layout block with")
    return files


def test_every_path_in_the_layout_block_exists():
    missing = [p for p in layout_entries() if not (ROOT / p).exists()]
    assert not missing, f"README layout names paths that do not exist: {missing}"


def test_the_layout_block_names_every_module_of_the_package_and_every_top_level_folder():
    named = {"/".join(p.rstrip("/").split("/")[:i])  # cpu_compat/sgl_kernel/ names cpu_compat too
             for p in layout_entries() for i in range(1, p.count("/") + 2)}
    files = tracked()
    package = {"/".join(f.split("/")[:2]) for f in files if f.startswith("megrez_sglang/")}
    package -= {"megrez_sglang/__init__.py"}
    folders = {f.split("/")[0] for f in files if "/" in f and not f.startswith(".ci/")}
    assert sorted(package - named) == [], "modules missing from the README's layout block"
    assert sorted(folders - named) == [], "folders missing from the README's layout block"


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r"^exec (.+)$", ci, re.M).group(1)
    assert f"{command}  " in README or f"{command}\n" in README
