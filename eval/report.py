"""The run's summary: JSON, a Markdown table beside the model card's figures, a bar chart PNG."""

from __future__ import annotations

import json
from pathlib import Path

from .code import CodeBenchmark

CARD_MODEL = "Megrez2-3x7B-A3B-Preview (card, OpenCompass)"


def isolation_note(run_info: dict) -> str:
    """How the run's generated code (HumanEval, MBPP) was isolated, for the table and the chart."""
    level = run_info.get("isolation")
    if level is None:
        return "no generated code was run"
    if level == "none":
        return "generated code ran WITHOUT isolation (--allow-unsandboxed-code)"
    return f"generated code ran in the sandbox, isolation: {level}"


def write_summary(run_dir: Path, run_info: dict, results: dict[str, dict], benchmarks: dict) -> None:
    summary = {"run": run_info, "results": results}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    lines = [
        f"# Evaluation: {run_info['model']}",
        "",
        f"Mode: {'constrained' if run_info['sampling']['constrained'] else 'free'} output formats; "
        f"temperature {run_info['sampling']['temperature']}, top_p {run_info['sampling']['top_p']}, "
        f"seed {run_info['sampling']['seed']}, {run_info['samples']} sample(s) per item"
        + (f", first {run_info['limit']} items" if run_info.get("limit") else "") + "; "
        + isolation_note(run_info) + ".",
        "",
        f"| benchmark | metric | items | score | {CARD_MODEL} | code isolation |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, r in results.items():
        bench = benchmarks[name]
        card = f"{bench.card_score:.1f}" if bench.card_score is not None else "-"
        isolation = run_info.get("isolation") if isinstance(bench, CodeBenchmark) else None
        lines.append(f"| {name} | {bench.metric} | {r['n']} | {r['score']:.1f} | {card} "
                     f"| {isolation or '-'} |")
    for name, r in results.items():
        details = {k: v for k, v in r.items() if k not in ("score", "n") and isinstance(v, (int, float))}
        if details:
            lines += ["", f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in details.items())]
    (run_dir / "summary.md").write_text("\n".join(lines) + "\n")
    _chart(run_dir / "summary.png", results, benchmarks, run_info)


def _chart(path: Path, results: dict, benchmarks: dict, run_info: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    ours = [results[n]["score"] for n in names]
    card = [benchmarks[n].card_score or 0.0 for n in names]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 4))
    ax.bar([i - 0.2 for i in x], ours, width=0.4, label=Path(str(run_info["model"])).name)
    ax.bar([i + 0.2 for i in x], card, width=0.4, label=CARD_MODEL, color="lightgray")
    ax.set_xticks(list(x), names)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("Megrez2 on the model card's benchmarks")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.text(0.01, 0.01, isolation_note(run_info), fontsize=8)  # the caption
    fig.savefig(path, dpi=120)
    plt.close(fig)
