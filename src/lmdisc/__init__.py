"""lmdisc: language models trained and fine-tuned with alternative objectives."""

__version__ = "0.1.0"
