"""Exact vs sampled negatives for the discriminator, on a source whose KL(q_0‖p) is known.

    OMP_NUM_THREADS=1 python benchmarks/negatives.py --vocab 200 --k 1,8,64 --seeds 3 \\
        --out results/negatives/negatives.md

The source is a random first-order Markov chain P (lmdisc.data.synthetic); q_0 is a deliberately
wrong bigram model, softmax(log P + noise·N(0, 1)). For every seed one discriminator (LSTM
encoder + zero-initialised head) is trained per configuration from the same initialisation, on
the same batches (fresh tokens every step), with the same optimiser: `negatives=exact`
(closed-form expectation over q_0) and `negatives=sampled` with k draws from q_0 per position.
On a held-out stream it reports the exact validation BCE, the KL(q_0‖p) estimate
Σ_v q_0(v)(−s_v) next to its exact value, the signed relative error (estimate − exact) / exact,
the AUC, and the training time per step (forward, loss, backward, Adam) with its ratio to
`exact` of the same seed. Cells are mean ± std over seeds. Runs on one thread
(torch.set_num_threads(1)) so that the timings compare.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from lmdisc.data.synthetic import exact_kl_rows, markov_chain, sample_chain
from lmdisc.io import atomic_write_text
from lmdisc.losses import discriminator_bce, discriminator_stats
from lmdisc.models.discriminator import Discriminator, LSTMEncoder

COLUMNS = ("V", "negatives", "k", "val BCE", "KL est", "KL exact", "rel. err", "AUC", "ms/step", "× exact")


def ints(text: str) -> list[int]:
    return [int(item) for item in text.split(",")]


def layout(stream: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of shape [rows, L] from a stream of rows·L + 1 tokens."""
    return stream[:-1].view(rows, -1), stream[1:].view(rows, -1)


def make_data(args, vocab: int, seed: int) -> dict:
    """The source (fixed by --source-seed), a wrong q_0, and fresh train/validation streams."""
    P = markov_chain(vocab, args.source_seed, args.sharpness)
    noise = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(args.source_seed + 1))
    log_q0 = torch.log_softmax(P.log() + args.noise * noise, -1)
    train = sample_chain(P, args.batch * args.steps * args.bptt + 1, 1000 + seed)  # no token seen twice
    val = sample_chain(P, args.batch * args.val_len + 1, 2000 + seed)
    return {"P": P, "log_q0": log_q0, "train": layout(train, args.batch), "val": layout(val, args.batch)}


def run(args, data: dict, seed: int, negatives: str, k: int) -> dict:
    vocab, log_q0 = data["P"].shape[0], data["log_q0"]
    (train_x, train_y), (val_x, val_y) = data["train"], data["val"]

    torch.manual_seed(seed)
    disc = Discriminator(LSTMEncoder(vocab, args.emb, args.hidden), vocab)
    optimizer = torch.optim.Adam(disc.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(args.batch, args.bptt, dtype=torch.bool)

    start = time.perf_counter()
    for step in range(args.steps):
        t = step * args.bptt
        x, y = train_x[:, t : t + args.bptt], train_y[:, t : t + args.bptt]
        s, _, _ = disc(x)
        loss = discriminator_bce(s, y, log_q0[x], mask, negatives, k, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ms_per_step = 1000 * (time.perf_counter() - start) / args.steps

    with torch.no_grad():
        s, _, _ = disc(val_x)
        stats = discriminator_stats(s, val_y, log_q0[val_x], torch.ones_like(val_y, dtype=torch.bool))
    n = stats["positions"]
    estimate, exact = (
        (stats["kl_q0_p"] / n).item(),
        exact_kl_rows(log_q0, data["P"].log())[val_x].mean().item(),
    )
    return {
        "val BCE": (stats["bce"] / n).item(),
        "KL est": estimate,
        "KL exact": exact,
        "rel. err": (estimate - exact) / exact,
        "AUC": (stats["auc"] / n).item(),
        "ms/step": ms_per_step,
    }


def cell(values: list[float], digits: int) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=ints, default=[200], help="comma-separated vocabulary sizes")
    parser.add_argument("--k", type=ints, default=[1, 8, 64], help="comma-separated negatives per position")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … seeds−1")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bptt", type=int, default=50)
    parser.add_argument("--val-len", type=int, default=1000, help="validation tokens per batch row")
    parser.add_argument("--emb", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--sharpness", type=float, default=2.0, help="of the Markov chain's logits")
    parser.add_argument("--noise", type=float, default=0.7, help="std of the error in q_0's logits")
    parser.add_argument("--source-seed", type=int, default=0, help="the chain P and q_0 (fixed over seeds)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (Markdown)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    configs = [("exact", 1)] + [("sampled", k) for k in args.k]
    rows = []
    for vocab in args.vocab:
        results = {config: [] for config in configs}
        for seed in range(args.seeds):
            data = make_data(args, vocab, seed)
            for negatives, k in configs:  # interleaved, so a background hiccup hits all alike
                result = run(args, data, seed, negatives, k)
                results[negatives, k].append(result)
                print(f"V={vocab} seed={seed} {negatives} k={k}: {result}", flush=True)
        base = [r["ms/step"] for r in results["exact", 1]]
        for (negatives, k), runs in results.items():
            metric = {name: [r[name] for r in runs] for name in COLUMNS[3:9]}
            ratio = [r["ms/step"] / b for r, b in zip(runs, base)]
            rows.append(
                [str(vocab), negatives, "—" if negatives == "exact" else str(k)]
                + [cell(metric[name], 4) for name in COLUMNS[3:8]]
                + [cell(metric["ms/step"], 2), cell(ratio, 2)]
            )

    settings = {key: value for key, value in vars(args).items() if key != "out"}
    lines = [
        f"Settings: {settings}, torch {torch.__version__}, 1 thread. Mean ± std over seeds.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    if args.out:
        atomic_write_text(table, args.out)


if __name__ == "__main__":
    main()
