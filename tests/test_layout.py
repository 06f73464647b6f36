"""The package's subpackages depend on each other one way: model <- serving <- programs <- training
(and demo on top). Read from the source (ast), so a forbidden import fails here even where it sits
in a function that no other test runs, and an import by module-path string (importlib, an
environment variable SGLang's subprocesses read) counts too."""

import ast
import re

from .conftest import ROOT

PACKAGE = ROOT / "megrez_sglang"

# Subpackage -> the subpackages it must not import. sglang_models is the model for SGLang: it
# stays where SGLANG_EXTERNAL_MODEL_PACKAGE names it, but sits in the model layer.
ABOVE_MODEL = {"serving", "programs", "training", "demo"}
FORBIDDEN = {
    "model": ABOVE_MODEL,
    "sglang_models": ABOVE_MODEL,
    "serving": {"programs", "training", "demo"},
    "programs": {"training", "demo"},
    "training": {"demo"},
    "demo": set(),
}
MODULE_PATH_STRING = re.compile(r"megrez_sglang(\.\w+)+(:\w+)?")


def imported_modules(source: str, package: list[str]) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in a module of `package`, relative ones resolved,
    plus every string constant that is a whole megrez_sglang module path."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            # `from . import x` / `from megrez_sglang import x` name modules in their names.
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if MODULE_PATH_STRING.fullmatch(node.value):
                found.append((node.lineno, node.value.split(":")[0]))
    return found


def layer_violations(subpackage: str) -> list[str]:
    forbidden = FORBIDDEN[subpackage]
    violations = []
    for path in sorted((PACKAGE / subpackage).rglob("*.py")):
        package = list(path.relative_to(ROOT).parts[:-1])
        for line, module in imported_modules(path.read_text(encoding="utf-8"), package):
            parts = module.split(".")
            if parts[0] == "megrez_sglang" and len(parts) > 1 and parts[1] in forbidden:
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return violations


def test_every_subpackage_has_a_layer_rule():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(FORBIDDEN), "a subpackage of megrez_sglang without a rule in FORBIDDEN"


def test_the_resolver_names_the_modules_an_import_reaches():
    source = ("from ..serving import engine\nfrom .config import MegrezMoeConfig\n"
              "def f():\n    import megrez_sglang.training.train_tiny\n"
              "PACKAGE = 'megrez_sglang.programs.math'\nDOC = 'see megrez_sglang.demo for a page'\n")
    assert sorted(imported_modules(source, ["megrez_sglang", "model"])) == [
        (1, "megrez_sglang.serving.engine"), (2, "megrez_sglang.model.config.MegrezMoeConfig"),
        (4, "megrez_sglang.training.train_tiny"), (5, "megrez_sglang.programs.math")]


def test_model_imports_nothing_from_serving_programs_or_training():
    assert layer_violations("model") == []
    assert layer_violations("sglang_models") == []


def test_serving_imports_nothing_from_programs_or_training():
    assert layer_violations("serving") == []


def test_programs_import_nothing_from_training():
    assert layer_violations("programs") == []
    assert layer_violations("training") == []


def test_each_subpackage_says_what_lives_there():
    for name in ("model", "serving", "programs", "training"):
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 15, f"megrez_sglang/{name}/__init__.py: no docstring"
