"""The CPU runtime: SGLang's CPU engine configured by the package, the sgl_kernel stand-in."""

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

import megrez_sglang
from megrez_sglang.serving import cpu_runtime

pytestmark = pytest.mark.skipif(megrez_sglang.DEVICE != "cpu", reason="CPU-host behaviour")


def test_importing_the_package_configures_sglangs_cpu_engine():
    assert os.environ["SGLANG_USE_CPU_ENGINE"] == "1"
    standin = str(cpu_runtime.STANDIN_DIR)
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == standin  # seen by spawned processes
    import sgl_kernel

    assert sgl_kernel.IS_MEGREZ_CPU_STANDIN
    assert Path(sgl_kernel.__file__).parent.parent == cpu_runtime.STANDIN_DIR


def test_cpu_placeholders_raise_and_record_the_call(tmp_path, monkeypatch):
    import sgl_kernel

    trace = tmp_path / "trace.txt"
    monkeypatch.setenv("MEGREZ_SGL_KERNEL_TRACE", str(trace))
    with pytest.raises(sgl_kernel.StandinKernelCalled, match="sgl_kernel.fused_experts_cpu was called"):
        sgl_kernel.fused_experts_cpu(1, 2)
    assert trace.read_text().split() == [str(os.getpid()), "fused_experts_cpu"]


def test_other_names_are_missing_so_sglangs_import_fallbacks_apply():
    import sgl_kernel

    with pytest.raises(AttributeError, match="CPU-only stand-in"):
        _ = sgl_kernel.silu_and_mul
    with pytest.raises(ImportError):
        exec("from sgl_kernel import fused_add_rmsnorm")
    with pytest.raises(ImportError):
        exec("from sgl_kernel.kvcacheio import transfer_kv_all_layer")


def test_sglang_sees_a_cpu_host_without_amx_kernels():
    from sglang.srt.utils.common import cpu_has_amx_support, is_cpu

    assert is_cpu() is True
    assert cpu_has_amx_support() is False  # so every layer takes its forward_native path


def test_the_readmes_eval_line_exports_the_settings_for_sglangs_own_entry_points():
    """`eval "$(python -m megrez_sglang.serving.cpu_env)"` in a shell, as README.md says, from a
    clean environment: the variables arrive, and nothing is printed on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG_") and k != "PYTHONPATH"}
    script = ('eval "$(python -m megrez_sglang.serving.cpu_env)" && '
              'echo "$SGLANG_USE_CPU_ENGINE $SGLANG_EXTERNAL_MODEL_PACKAGE ${PYTHONPATH%%:*}"')
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120,
                       cwd=tempfile.gettempdir())
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.split() == ["1", "megrez_sglang.sglang_models", str(cpu_runtime.STANDIN_DIR)]


def test_forcing_cuda_changes_nothing(monkeypatch):
    monkeypatch.setenv(cpu_runtime.DEVICE_ENV, "cuda")
    assert cpu_runtime.cpu_engine_environment() == {}
    assert cpu_runtime.configure_sglang_for_host() == "cuda"
