"""The reproduce pipeline: converged base LM -> discriminator -> fine-tuning arms -> results.md."""

from .report import write_report
from .stages import Pipeline

__all__ = ["Pipeline", "write_report"]
