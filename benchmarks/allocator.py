"""Training tokens/s with glibc's default allocator vs `keep_freed_memory` (lmdisc/allocator.py).

    python benchmarks/allocator.py --data ptb --batches 300 --repeats 3
    python benchmarks/allocator.py --data wikitext2 --batches 200 --repeats 3

Each run is a separate `train.py` process (the allocator setting is per process), with
LMDISC_KEEP_FREED_MEMORY=0 or 1, interleaved, on torch's default threads (all cores). It trains
`--batches` batches of the Zaremba small LSTM without validation or evaluation and reports
metrics.json's train_tokens_per_s (trainer start-up and the checkpoint included). Prints every
run, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"glibc default": "0", "keep_freed_memory": "1"}


def one_run(data: str, batches: int, keep: str, out_dir: Path) -> float:
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=zaremba_small",
        f"data={data}",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={batches}",
        "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false",
        "logger=none",
        "evaluate=false",
        f"hydra.run.dir={out_dir}",
    ]
    env = {**os.environ, "LMDISC_KEEP_FREED_MEMORY": keep}
    run = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if run.returncode != 0:
        sys.exit(f"train.py failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    return json.loads((out_dir / "metrics.json").read_text())["train_tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="ptb", help="data config: ptb, wikitext2, ...")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name, keep in SETTINGS.items():
                out_dir = Path(tmp) / f"{keep}_{repeat}"
                runs[name].append(one_run(args.data, args.batches, keep, out_dir))
                print(f"{name:18s} run {repeat + 1}: {runs[name][-1]:8.0f} tokens/s", flush=True)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    print(f"\n{args.data}, {args.batches} batches, median of {args.repeats}:")
    for name, value in medians.items():
        print(f"  {name:18s} {value:8.0f} tokens/s  (runs: {', '.join(f'{v:.0f}' for v in runs[name])})")
    ratio = medians["keep_freed_memory"] / medians["glibc default"]
    print(f"  keep_freed_memory / glibc default = {ratio:.3f}")


if __name__ == "__main__":
    main()
