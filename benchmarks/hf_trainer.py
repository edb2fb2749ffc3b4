"""Training throughput of a transformers model: ours (model=hf, Lightning) vs the Hugging Face `Trainer`.

    python benchmarks/hf_trainer.py --model-dir DIR --steps 30 --repeats 5            # any HF directory
    python benchmarks/hf_trainer.py --tiny-llama --steps 200 --repeats 5             # a 2-layer Llama built here
    python benchmarks/hf_trainer.py --model-dir .cache/lmdisc/pretrained/SmolLM2-135M-Instruct \\
        --batch-size 4 --block-size 256 --precision bf16-mixed --steps 12 --repeats 5

Same model (copies of one), same blocks of the same corpus (read with the model's tokenizer),
same batch, length, precision, optimiser (the same multi-tensor AdamW object type and settings, lr
1e-4, no weight decay, constant rate, handed to the Trainer rather than its default fused one) and
gradient clipping (0.25), one process, no evaluation, checkpointing or logging. Each run times the
whole `fit()` / `train()` call, start-up included, and counts batch × length input tokens (the
Trainer scores length − 1 targets per row: its labels are the inputs, shifted inside the model).
The two are interleaved `--repeats` times; the medians and their ratio are printed, with every run
and the machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time

import torch
from machine import describe
from throughput import lightning_loop

from lmdisc.allocator import keep_freed_memory
from lmdisc.data import LMDataModule
from lmdisc.data.protocols import BlockProtocol
from lmdisc.losses import CompositeLoss, CrossEntropyLoss
from lmdisc.models import HFCausalLM
from lmdisc.modules import LanguageModel

LR, CLIP = 1e-4, 0.25


def adamw(params) -> torch.optim.AdamW:
    """The one optimiser both sides use (conf/optim/adamw.yaml's multi-tensor AdamW, no weight decay)."""
    return torch.optim.AdamW(params, lr=LR, weight_decay=0.0, foreach=True)


def ours(model: HFCausalLM, datamodule, steps: int, precision: str) -> float:
    module = LanguageModel(
        model=model,
        loss=CompositeLoss({"ce": {"weight": 1.0, "loss": CrossEntropyLoss()}}),
        optimizer=adamw,
        carry_state=False,
    )
    return lightning_loop(module, datamodule, steps, CLIP, "cpu", precision)


def hf_trainer(hf_model, rows: list[torch.Tensor], batch_size: int, steps: int, precision: str) -> float:
    from transformers import Trainer, TrainingArguments

    dataset = [{"input_ids": row, "labels": row} for row in rows]
    with tempfile.TemporaryDirectory() as out:
        arguments = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=batch_size,
            max_steps=steps,
            learning_rate=LR,
            weight_decay=0.0,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=CLIP,
            bf16=precision == "bf16-mixed",
            use_cpu=True,
            logging_strategy="no",
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
        )
        optimizer = adamw(hf_model.parameters())
        constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        trainer = Trainer(
            model=hf_model, args=arguments, train_dataset=dataset, optimizers=(optimizer, constant)
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return steps * batch_size * rows[0].numel() / seconds


def build_tiny_llama(directory: str, data: str) -> str:
    """A 2-layer, 128-wide Llama with a 4,096-token BPE of the corpus' training split, saved in `directory`."""
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from lmdisc.data.corpus import read_lines
    from lmdisc.data.tokenizers import train_bpe

    tokenizer = train_bpe(read_lines(os.path.join(data, "train.txt")), 4096)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend).save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", help="a transformers directory (config, weights, tokenizer.json)")
    parser.add_argument("--tiny-llama", action="store_true", help="build a tiny Llama here instead")
    parser.add_argument("--data", default=os.path.join(os.environ.get("LMDISC_DATA_DIR", "data"), "ptb"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    keep_freed_memory()
    print(describe(torch.device("cpu")), flush=True)
    if args.tiny_llama:
        args.model_dir = build_tiny_llama(tempfile.mkdtemp(prefix="tiny-llama-"), args.data)
    elif not args.model_dir:
        parser.error("give --model-dir DIR or --tiny-llama")
    datamodule = LMDataModule(
        path=args.data,
        tokenizer="hf",
        tokenizer_from=args.model_dir,
        batch_size=args.batch_size,
        block_size=args.block_size,
        seed=0,
    )
    torch.manual_seed(0)
    template = HFCausalLM(datamodule.tokenizer.vocab_size, args.model_dir)
    datamodule.bind_model(template)
    # the Trainer reads the very blocks our first epoch reads, in a fixed order
    blocks = BlockProtocol(args.block_size, seed=0).loader(datamodule.load()["train"], 1, train=True)
    rows = [w.inputs[0] for _, w in zip(range(args.steps * args.batch_size), blocks)]
    params = sum(p.numel() for p in template.parameters())
    print(
        f"{args.model_dir}: {params:,} parameters, batch {args.batch_size} x {args.block_size}, "
        f"{args.steps} steps, {args.precision}",
        flush=True,
    )
    runs: dict[str, list[float]] = {"hf Trainer": [], "ours": []}
    for _ in range(args.repeats):
        runs["hf Trainer"].append(
            hf_trainer(copy.deepcopy(template.hf), rows, args.batch_size, args.steps, args.precision)
        )
        runs["ours"].append(ours(copy.deepcopy(template), datamodule, args.steps, args.precision))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    for name, values in runs.items():
        print(f"{name:<11} {medians[name]:9,.0f} tokens/s   runs: {', '.join(f'{v:,.0f}' for v in values)}")
    print(f"ratio ours/hf Trainer: {medians['ours'] / medians['hf Trainer']:.3f}")


if __name__ == "__main__":
    main()
