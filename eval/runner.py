"""Running one benchmark into a run directory: per-item JSONL written as results arrive, and a
resume that skips finished items (kill it, restart it: nothing lost, nothing duplicated)."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from .benchmark import Benchmark, Item, Sample


def records_path(run_dir: Path, bench: Benchmark) -> Path:
    return run_dir / f"{bench.name}.jsonl"


def load_records(path: Path) -> list[dict]:
    """The finished items; a last line cut short by a kill is dropped (and cut off the file)."""
    if not path.exists():
        return []
    records, good_bytes = [], 0
    with path.open("rb") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_bytes += len(line)
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_bytes)
    return records


def run_benchmark(bench: Benchmark, items: list[Item], sampler, run_dir: Path, samples: int = 1,
                  concurrency: int = 8, progress: bool = True) -> list[dict]:
    path = records_path(run_dir, bench)
    done = {r["id"]: r for r in load_records(path)}
    todo = [item for item in items if item.id not in done]

    def ask(item: Item) -> list[Sample]:
        return [sampler.sample(bench, item, i) for i in range(samples)]

    bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=bench.name, unit="item",
               disable=not progress, dynamic_ncols=True)
    with path.open("a", encoding="utf-8") as out, ThreadPoolExecutor(max(1, concurrency)) as pool:
        futures = {pool.submit(ask, item): item for item in todo}
        try:
            for future in as_completed(futures):
                item = futures[future]
                outputs = future.result()  # a failed request stops the run; a rerun resumes
                # Graded here, in the main thread: math-verify's timeout uses signals.
                record = {
                    "id": item.id, "prompt": item.prompt, "gold": item.gold, "meta": item.meta,
                    "samples": [asdict(s) for s in outputs],
                    "output": outputs[0].text, "answer": outputs[0].answer,
                    "grade": bench.grade(item, outputs),
                    "completion_tokens": sum(s.completion_tokens for s in outputs),
                    "latency_s": sum(s.latency_s for s in outputs),
                }
                record["correct"] = record["grade"]["correct"]
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
                os.fsync(out.fileno())
                done[item.id] = record
                bar.update()
        finally:
            for f in futures:
                f.cancel()
            bar.close()
    wanted = {item.id for item in items}
    return [done[i] for i in done if i in wanted]
