"""The project as a package: `pip install .` (not editable) gives a working megrez_sglang, its
prompts and its SGLang plugin, without this checkout on sys.path."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT

PROGRAM = """
import json, sys
import megrez_sglang
from megrez_sglang.model.prompts import PROMPTS_DIR, math_prompt
from megrez_sglang.programs import runtime, solve_math

if __name__ == "__main__":
    rt = runtime(sys.argv[1])
    try:
        r = solve_math("1 + 1 = ?", rt.endpoint, reasoning_max_tokens=8, temperature=0.0)
    finally:
        rt.shutdown()
    print(json.dumps({"package": megrez_sglang.__file__, "prompts": str(PROMPTS_DIR),
                      "prompt": math_prompt("1 + 1 = ?", "en"), "answer": r.answer,
                      "boxed": r.text[len(r.reasoning):]}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(out)], check=True, capture_output=True)
    [wheel] = out.glob("megrez_sglang-*.whl")
    return wheel


def test_the_wheel_carries_the_prompts_the_stand_in_and_the_plugin(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    prompts = sorted(p.name for p in (ROOT / "prompts").glob("*.txt"))
    packaged = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("megrez_sglang/model/prompt_texts/"))
    assert packaged == prompts
    assert "megrez_sglang/cpu_compat/sgl_kernel/__init__.py" in names
    assert "megrez_sglang/model/tokenizer/chat_template.jinja" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    entry_points_txt = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "megrez_moe = megrez_sglang.serving.registration:register" in entry_points_txt
    assert not [n for n in names if n.startswith(("tests/", "eval/", "bench/"))]


@pytest.mark.slow
def test_an_installed_wheel_runs_a_program_outside_the_checkout(wheel, tmp_path, tiny_checkpoint):
    base = Path(sys.prefix) / ".megrez-base"  # scripts/setup_env.sh's shared environment
    if not base.is_file():
        pytest.skip("not running in the project's layered environment (scripts/run.sh)")
    scratch = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(scratch)], check=True)
    python = scratch / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    shared = Path(base.read_text().strip())
    shared_site = next((shared / "lib").glob("python3*/site-packages"))
    (Path(site) / "_megrez_shared_env.pth").write_text(
        f"import site; site.addsitedir({str(shared_site)!r})\n")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], check=True,
                   capture_output=True)
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([python, str(script), tiny_checkpoint], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = __import__("json").loads(r.stdout.strip().splitlines()[-1])
    assert out["package"].startswith(site) and out["prompts"].startswith(site)
    assert out["prompt"].endswith("Please reason step by step, and put your final answer within \\boxed{}.")
    assert out["boxed"] == "\\boxed{" + out["answer"] + "}"
