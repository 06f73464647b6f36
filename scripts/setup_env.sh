#!/usr/bin/env bash
# Creates or reuses the project's Python environment; idempotent, and quick when nothing changed.
#
# Two layers, so that a fresh clone (every CI run is one) does not rebuild ~11 GB of SGLang:
#   1. a shared environment OUTSIDE the clone holding every pinned dependency, keyed by the hash of
#      requirements.lock and the interpreter version:
#      ${MEGREZ_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/megrez-sglang}/env-<key>
#      Built once per key (pip's own cache makes a rebuild cheap); concurrent set-ups wait on a lock.
#   2. a thin .venv inside the clone, layered on that environment by a .pth file, holding only the
#      editable install of this project (its metadata carries the SGLang plugin entry point).
# Needs only CPython 3.11 (override: MEGREZ_PYTHON) and the package registries.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${MEGREZ_PYTHON:-python3.11}
command -v "$python" >/dev/null || { echo "setup_env: $python not found (set MEGREZ_PYTHON)" >&2; exit 1; }

key=$({ "$python" -c 'import platform, sys; print(sys.version, platform.machine())'; cat "$root/requirements.lock"; } | sha256sum | cut -c1-16)
cache=${MEGREZ_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/megrez-sglang}
base="$cache/env-$key"
mkdir -p "$cache"

(
  flock 9
  if [ ! -f "$base/.complete" ]; then
    echo "setup_env: building the shared environment $base (a few minutes, once per requirements.lock)" >&2
    rm -rf "$base"
    "$python" -m venv "$base"
    "$base/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/requirements.lock"
    touch "$base/.complete"
  fi
) 9>"$cache/env-$key.lock"

venv="$root/.venv"
if [ "$(cat "$venv/.megrez-base" 2>/dev/null)" != "$base" ]; then
  rm -rf "$venv"
  "$python" -m venv --without-pip "$venv"
  venv_site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  base_site=$("$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # addsitedir (not a bare path) so that the shared environment's own .pth files are processed too.
  echo "import site; site.addsitedir('$base_site')" > "$venv_site/_megrez_shared_env.pth"
  echo "$base" > "$venv/.megrez-base"
fi

stamp=$(sha256sum "$root/pyproject.toml" | cut -c1-16)
if [ "$(cat "$venv/.megrez-project" 2>/dev/null)" != "$stamp" ]; then
  # pip comes from the shared layer; it installs into the thin venv (sys.prefix). "compat" mode
  # puts the checkout on sys.path, so modules added later need no reinstall.
  (cd "$root" && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      --no-deps --no-build-isolation --config-settings editable_mode=compat --editable .)
  echo "$stamp" > "$venv/.megrez-project"
fi
