"""A table of generated samples in W&B at each validation: how the text reads, not only its PPL."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from lmdisc.generation import generate, prompt_ids
from lmdisc.wandb_tracking import wandb_loggers


class WandbSamples(L.Callback):
    """After each validation (not the sanity check), `max_new_tokens` sampled after every prompt,
    logged as the W&B table `samples` (step, prompt, sample). Does nothing without a W&B logger."""

    def __init__(
        self,
        prompts: list[str] = ("",),
        max_new_tokens: int = 40,
        temperature: float = 1.0,
        top_k: int | None = 50,
        seed: int = 0,
    ):
        self.prompts = list(prompts)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = wandb_loggers(trainer.loggers)
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if not loggers or trainer.sanity_checking or tokenizer is None:
            return
        model = pl_module.model
        was_training = model.training
        rows = []
        for prompt in self.prompts:
            ids = prompt_ids(tokenizer, prompt)
            new = generate(
                model,
                ids,
                self.max_new_tokens,
                self.temperature,
                self.top_k,
                seed=self.seed,
                device=pl_module.device,
            )
            rows.append([trainer.global_step, prompt, tokenizer.decode(new)])
        model.train(was_training)
        for logger in loggers:
            logger.log_text(key="samples", columns=["step", "prompt", "sample"], data=rows)
