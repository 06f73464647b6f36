"""Print the settings SGLang's CPU path needs on this host as shell ``export`` lines, for starting
SGLang's own entry points (``sglang serve``, ``python -m sglang.launch_server``) by hand:

    eval "$(python -m megrez_sglang.serving.cpu_env)"

On a CUDA host only the model package is exported. A module of its own: run as ``python -m
megrez_sglang.serving.cpu_runtime`` (which the package imports first), Python warned on stderr.
"""

import shlex

from .cpu_runtime import MODEL_PACKAGE, cpu_engine_environment


def export_lines() -> list[str]:
    settings = {"SGLANG_EXTERNAL_MODEL_PACKAGE": MODEL_PACKAGE, **cpu_engine_environment()}
    return [f"export {key}={shlex.quote(value)}" for key, value in settings.items()]


if __name__ == "__main__":
    print("\n".join(export_lines()))
