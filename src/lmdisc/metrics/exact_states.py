"""Metric states that keep their dtype when the module around them is cast.

torchmetrics blocks `.half()`, `.float()` and `.type()` on its states, but not `.to(dtype)`, which is
what Lightning's `precision=bf16-true` (and `16-true`) applies to the whole LightningModule. A bf16
running sum stops growing once the next term falls below its resolution (adding 1.0 a thousand
times gives 256), so a token-weighted perplexity would silently be wrong. Our metrics keep their
fp64 sums and integer counts under any cast; they still follow the module across devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import Module
from torchmetrics import Metric


class ExactStateMetric(Metric):
    """A torchmetrics Metric whose states keep the dtype they were declared with."""

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = "") -> Module:
        def same_dtype(tensor: torch.Tensor) -> torch.Tensor:
            moved = fn(tensor)
            return moved if moved.dtype == tensor.dtype else moved.to(tensor.dtype)

        return super()._apply(same_dtype, exclude_state)
