"""FSDP2 (`torch.distributed.fsdp.fully_shard`) through Lightning's ModelParallelStrategy.

Lightning's FSDPStrategy refuses a CPU; ModelParallelStrategy with FSDP2 runs on CPU (gloo) and GPU
(nccl). `shard_language_model` applies `fully_shard` to each unit a model names (`shard_units`: a
transformer's blocks, an LSTM's recurrent core), then to the model itself, whose own unit holds the
rest (the embedding and the output layer, tied or not, in one unit: tied parameters in two units
raise). Not to the LightningModule: its training_step never calls its own forward, and a root unit
that is never called leaves its parameters sharded (mixed Tensor/DTensor errors). Every trainable
parameter ends up in a unit, so gradient clipping sees DTensors only.

The frozen q_0 and the discriminator of rkl_disc are not sharded: they take no gradient and no
optimiser state, and each process keeps one full copy (their weights' bytes, e.g. 540 MB for
SmolLM2-135M's q_0 in fp32), as under DDP.

`FSDPStrategy` (ours) writes its sharded checkpoint directories atomically: each process writes its
shard into a directory beside the target, and rank 0 renames it into place once all are done.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lmdisc.errors import LmdiscError


def shardable(model: torch.nn.Module) -> None:
    """Refuse, by name, a model FSDP cannot shard here."""
    units = getattr(model, "shard_units", None)
    if units is None or not units():
        raise LmdiscError(
            f"trainer=fsdp cannot shard {type(model).__name__}: it names no units to shard (shard_units); "
            "use trainer=ddp"
        )


def uses_fsdp(trainer_cfg) -> bool:
    """Whether a trainer config selects this module's FSDPStrategy (trainer=fsdp)."""
    strategy = trainer_cfg.get("strategy") if trainer_cfg is not None else None
    return hasattr(strategy, "get") and str(strategy.get("_target_", "")).endswith("FSDPStrategy")


def check_fsdp_run(trainer_cfg, model: torch.nn.Module, chunk_size: int) -> None:
    """Before any process starts: the model can be sharded, and nothing bypasses its forward."""
    if not uses_fsdp(trainer_cfg):
        return
    shardable(model)
    if chunk_size:
        raise LmdiscError(
            "ce_chunk_size reads the output layer outside the model's forward, where FSDP does not gather "
            "it: drop ce_chunk_size with trainer=fsdp"
        )
    if str(trainer_cfg.get("precision")) in ("16-mixed", "16"):
        raise LmdiscError("trainer=fsdp runs 32-true, bf16-mixed or bf16-true; not 16-mixed")


def shard_language_model(model: torch.nn.Module, mesh) -> None:
    """fully_shard each of the model's units, then the model (the remaining parameters)."""
    from torch.distributed.fsdp import fully_shard

    shardable(model)
    for unit in model.shard_units():
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)


def is_fsdp(strategy) -> bool:
    return isinstance(strategy, ModelParallelStrategy)


class FSDPStrategy(ModelParallelStrategy):
    """ModelParallelStrategy (FSDP2, data parallel only) whose sharded checkpoints appear whole or not
    at all: a directory is written beside the target and renamed into place."""

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        partial = path.with_name(f".{path.name}.partial")
        if self.global_rank == 0 and partial.exists():
            shutil.rmtree(partial)
        self.barrier("fsdp_checkpoint_clean")
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier("fsdp_checkpoint_written")
        if self.global_rank == 0:
            old = path.with_name(f".{path.name}.old")
            if path.exists():
                path.rename(old)
            partial.rename(path)
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        self.barrier("fsdp_checkpoint_renamed")

    def remove_checkpoint(self, filepath) -> None:
        if self.global_rank == 0:
            path = Path(filepath)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
