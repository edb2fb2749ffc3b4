"""How much memory each process's training state takes: weights, gradients and optimiser state,
counting only the shard a process holds (FSDP's DTensors by their local part).

Peak resident memory is a poor measure of what sharding saves on a CPU: the pretrained file's
mapped pages, the tokenised corpus and the allocator's kept memory weigh as much. This callback
prints one line per process at the end of training, which benchmarks/scaling.py reads:
    python train.py ... +callbacks.state_memory._target_=lmdisc.callbacks.StateMemory
"""

from __future__ import annotations

import lightning as L
import torch


def _local_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


class StateMemory(L.Callback):
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = [p for p in pl_module.parameters()]
        weights = sum(_local_bytes(p) for p in params)
        grads = sum(_local_bytes(p.grad) for p in params if p.grad is not None)
        optimiser = sum(
            _local_bytes(value)
            for optimizer in trainer.optimizers
            for state in optimizer.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        )
        mb = 1024**2
        print(
            f"training state of rank {trainer.global_rank}: weights {weights / mb:,.0f} MB, gradients "
            f"{grads / mb:,.0f} MB, optimiser {optimiser / mb:,.0f} MB",
            flush=True,
        )
