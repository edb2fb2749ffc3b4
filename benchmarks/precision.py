"""bf16-mixed against 32-true on this machine: training tokens/s and validation perplexity after the
same steps, for lstm_small, awd_lstm and gpt (each the real train.py, one process, side by side).

    python benchmarks/precision.py                       # PTB, 60 steps each, validation on 200 windows
    python benchmarks/precision.py --models gpt --steps 100

tokens/s is the median of the logged `train/tokens_per_s` after the first logged step; the validation
perplexity is the run's own after its last step, on the first `--val-batches` validation windows
(the same windows for both precisions). How bf16 compares with fp32 depends on the CPU (AMX or
not); benchmarks/lstm_core.py times the LSTM's recurrent core alone in either dtype.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import torch
from machine import describe
from scaling import DATA, run_arm
from scaling import MODELS as SCALING_MODELS

MODELS = {
    "lstm_small": ["model=lstm_small", "data.batch_size=20", "data.bptt=35", "optim.optimizer.lr=20"],
    "awd_lstm": ["model=awd_lstm", "optim=asgd", "data.batch_size=20", "data.bptt=70"],
    "gpt": SCALING_MODELS["gpt"],  # the same run as scaling.py's
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--val-batches", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(describe(torch.device("cpu")))
    print(f"{'model':<12}{'precision':<12}{'tokens/s':>10}{'x 32-true':>10}{'val PPL':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            base = None
            for precision in ("32-true", "bf16-mixed"):
                out = Path(tmp) / f"{model}_{precision}"
                overrides = [
                    *MODELS[model],
                    "data=ptb",
                    "data.download=false",
                    f"paths.data_dir={DATA}",
                    f"precision={precision}",
                    "trainer.accelerator=cpu",
                    "trainer.max_epochs=1",
                    f"trainer.limit_train_batches={args.steps}",
                    f"trainer.limit_val_batches={args.val_batches}",
                    "trainer.num_sanity_val_steps=0",
                    f"trainer.log_every_n_steps={max(1, args.steps // 6)}",
                    "callbacks.progress_bar=null",
                    "trainer.enable_model_summary=false",
                    "evaluate=false",
                ]
                row = run_arm(f"{model} {precision}", overrides, args.threads, out)
                with open(out / "csv" / "version_0" / "metrics.csv") as handle:
                    val = [float(r["val/ppl"]) for r in csv.DictReader(handle) if r.get("val/ppl")][-1]
                base = base or row["tokens_per_s"]
                print(
                    f"{model:<12}{precision:<12}{row['tokens_per_s']:>10,.0f}"
                    f"{row['tokens_per_s'] / base:>10.2f}{val:>10.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
