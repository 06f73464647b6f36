"""What every benchmark here shares: the machine and versions, a printed table, a JSON record."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from megrez_sglang.model.provenance import git_revision, package_versions

RESULTS_DIR = Path(__file__).with_name("results")


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_cores": os.cpu_count(), "platform": platform.platform()}
    try:
        info["cpu"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                           if l.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info.update(package_versions())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_table(title: str, headers: list[str], rows: list[list]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r]
                                           for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for i, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_json(name: str, payload: dict, out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "git_commit": git_revision(), "command": " ".join(["python", *sys.orig_argv[1:]]),
              "machine": machine(), **payload}
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwrote {path}")
    return path
