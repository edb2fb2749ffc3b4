"""`python generate.py ckpt=PATH prompt="..." max_new_tokens=N`: sample from a checkpoint of ours, or
from a pretrained model (`generate.py model=smollm2_135m prompt="..."`)."""

from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig

from lmdisc.checkpoint import build_model, checkpoint_tokenizer, load_lm_checkpoint
from lmdisc.generation import generate, prompt_ids
from lmdisc.validation import validate

from . import CONF_DIR
from .common import pretrained_model, run_main
from .eval import resolve_device


def load_for_generation(cfg: DictConfig):
    if cfg.get("ckpt"):
        ckpt = load_lm_checkpoint(cfg.ckpt)
        return build_model(ckpt), checkpoint_tokenizer(ckpt)
    return pretrained_model(cfg, "generate.py")


def sample(cfg: DictConfig) -> dict:
    validate(cfg)
    model, tokenizer = load_for_generation(cfg)
    device = resolve_device(cfg.get("device", "auto"))
    model = model.to(device)
    ids = prompt_ids(tokenizer, str(cfg.prompt))
    samples = []
    for index in range(cfg.num_samples):
        new = generate(
            model, ids, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, cfg.seed + index, device
        )
        text = tokenizer.decode(ids + new)
        samples.append(text)
        print(f"--- sample {index + 1} (seed {cfg.seed + index}) ---\n{text}", flush=True)
    return {"prompt": cfg.prompt, "samples": samples}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision("high")
    run_main(sample, cfg)


if __name__ == "__main__":
    main()
