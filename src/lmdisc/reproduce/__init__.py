"""The reproduce pipeline: converged base LM -> discriminator -> fine-tuning arms -> results.md."""

from .pipeline import Pipeline
from .report import write_report

__all__ = ["Pipeline", "write_report"]
