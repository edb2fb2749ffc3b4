"""Building an LM from its config group and a tokenizer: the one place the vocabulary reaches a model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmdisc.config import instantiate
from lmdisc.data.tokenizers import Tokenizer

from .base import LanguageModelBase


def build_lm(
    model_cfg: Mapping | DictConfig, tokenizer: Tokenizer, hf_config: dict | None = None
) -> LanguageModelBase:
    """Instantiate `model=` for `tokenizer`: the model predicts its `vocab_size` ids and reads its
    input-only ids too. `hf_config` (from one of our checkpoints) rebuilds a transformers model's
    architecture without reading its source directory."""
    cfg: dict[str, Any] = (
        OmegaConf.to_container(model_cfg, resolve=True)
        if isinstance(model_cfg, DictConfig)
        else dict(model_cfg)
    )
    if hf_config is not None:
        cfg.update(hf_config=hf_config, pretrained=None)
    extra = {"input_only_tokens": tokenizer.input_only_tokens} if tokenizer.input_only_tokens else {}
    return instantiate(cfg, vocab_size=tokenizer.vocab_size, _convert_="all", **extra)
