"""Reverse KL to the data distribution, estimated with a discriminator (Popov & Kudinov 2018).

    term(θ) = mean_c Σ_v q_θ(v|c) [log q_θ(v|c) − log q_0(v|c) − s(c)_v]

q_0 is a frozen copy of the LM at the start of fine-tuning and s the discriminator's logits,
trained so that s* = log p − log q_0: then the bracket is log q_θ − log p and the sum is exactly
KL(q_θ‖p). With s ≡ 0 it is KL(q_θ‖q_0), a "stay near the base model" control. The sum runs over
the whole vocabulary (no sampling); q_0 and s carry no gradient. Used as a weighted term of
`CompositeLoss` next to cross-entropy, the weight being λ.
"""

from __future__ import annotations

import torch
from torch import nn

from lmdisc.models.base import State

from .base import BatchContext, LossOutput


def reverse_kl_terms(
    log_q: torch.Tensor, log_q0: torch.Tensor, s: torch.Tensor | None, mask: torch.Tensor
) -> torch.Tensor:
    """Per-position Σ_v q [log q − log q0 − s] ([B, T], zero where `mask` is False)."""
    inner = log_q - log_q0
    if s is not None:
        inner = inner - s
    return (log_q.exp() * inner).sum(-1) * mask


class ReverseKLLoss:
    """The rKL term for `loss=rkl_disc`, with its own carried states for q_0 and the discriminator.

    `reference` and `discriminator` are frozen `forward(tokens, state) -> (out, state, extras)`
    modules (the discriminator's `out` is s). They are not nn.Module attributes of the
    LightningModule, so they stay out of its state dict, its optimiser and DDP's gradient sync.
    """

    def __init__(
        self,
        reference: nn.Module,
        discriminator: nn.Module | None = None,
        discriminator_config: dict | None = None,
    ):
        self.reference = reference.eval().requires_grad_(False)
        self.discriminator_config = discriminator_config or {}  # how it was trained (for refreshes)
        self.discriminator = discriminator.eval().requires_grad_(False) if discriminator is not None else None
        self._states: tuple[State, State] = (None, None)
        self._bucket_onehot: torch.Tensor | None = None
        self._bucket_names: list[str] = []

    def bind_corpus(self, corpus) -> None:
        """Group the vocabulary by training-set frequency, so each step logs the probability mass
        fine-tuning has moved into (or out of) each bucket: mean_c Σ_{v in bucket} (q_θ − q_0)."""
        from lmdisc.analysis.frequency import FrequencyBuckets

        buckets = FrequencyBuckets(corpus["train"], len(corpus.vocab))
        self._bucket_names = [row["bucket"] for row in buckets.rows()]
        self._bucket_onehot = torch.nn.functional.one_hot(
            buckets.bucket_of_word, len(self._bucket_names)
        ).float()

    def _to(self, device: torch.device) -> None:
        if next(self.reference.parameters()).device != device:
            self.reference.to(device)
            if self.discriminator is not None:
                self.discriminator.to(device)

    @torch.no_grad()
    def _frozen_outputs(self, inputs: torch.Tensor, first_window: bool):
        ref_state, disc_state = (None, None) if first_window else self._states
        ref_logits, ref_state, _ = self.reference(inputs, ref_state)
        log_q0 = torch.log_softmax(ref_logits.float(), dim=-1)
        s = None
        if self.discriminator is not None:
            s, disc_state, _ = self.discriminator(inputs, disc_state)
            s = s.float()
        self._states = (ref_state, disc_state)
        return log_q0, s

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, ctx: BatchContext) -> LossOutput:
        self._to(logits.device)
        log_q0, s = self._frozen_outputs(ctx.inputs, ctx.first_window)
        log_q = ctx.log_probs(logits)
        mask = targets != ctx.ignore_index
        count = mask.sum().clamp_min(1)
        term = reverse_kl_terms(log_q, log_q0, s, mask).sum() / count
        with torch.no_grad():
            q = log_q.exp()
            logs = {"kl_q_q0": ((q * (log_q - log_q0)).sum(-1) * mask).sum() / count}
            if s is not None:
                logs["mean_s_under_q"] = ((q * s).sum(-1) * mask).sum() / count
            if self._bucket_onehot is not None:
                logs.update(self._mass_moved(q - log_q0.exp(), mask, count))
        return LossOutput(term, logs)

    def _mass_moved(self, delta: torch.Tensor, mask: torch.Tensor, count: torch.Tensor) -> dict:
        onehot = self._bucket_onehot.to(delta.device)
        per_bucket = ((delta @ onehot) * mask.unsqueeze(-1)).sum((0, 1)) / count
        return {f"mass_moved/{name}": value for name, value in zip(self._bucket_names, per_bucket)}


def reverse_kl_from_checkpoints(
    reference_ckpt: str, discriminator_ckpt: str | None = None, discriminator: str = "ckpt"
) -> ReverseKLLoss:
    """Build the term from files: q_0 from the LM being fine-tuned (`init_from`), s from train_disc.py.

    `discriminator=none` is the control arm (s ≡ 0: CE + λ·KL(q_θ‖q_0)). A discriminator trained
    against another LM (by weight fingerprint) or with another vocabulary is refused.
    """
    from lmdisc.checkpoint import (
        build_model,
        load_checkpoint,
        load_discriminator,
        weights_sha256,
    )
    from lmdisc.errors import LmdiscError

    if not reference_ckpt:
        raise LmdiscError("loss=rkl_disc fine-tunes a trained LM: set init_from=PATH (it also becomes q_0)")
    if discriminator not in ("ckpt", "none"):
        raise LmdiscError(f"loss.discriminator must be ckpt or none, got {discriminator!r}")
    reference = load_checkpoint(reference_ckpt)
    q0 = build_model(reference)
    if discriminator == "none":
        return ReverseKLLoss(q0, None)
    if not discriminator_ckpt:
        raise LmdiscError(
            "loss=rkl_disc needs loss.discriminator_ckpt=PATH (from train_disc.py), or loss.discriminator=none "
            "for the s = 0 control"
        )
    disc, disc_ckpt = load_discriminator(discriminator_ckpt)
    if disc_ckpt["lmdisc"]["vocab"] != reference["lmdisc"]["vocab"]:
        raise LmdiscError(f"discriminator {discriminator_ckpt} has another vocabulary than {reference_ckpt}")
    expected = weights_sha256(q0.state_dict())
    trained_against = disc_ckpt["lmdisc"]["lm"]
    if trained_against.get("sha256") != expected:
        raise LmdiscError(
            f"discriminator {discriminator_ckpt} was trained against the LM {trained_against.get('path')} "
            f"(weights sha256 {str(trained_against.get('sha256'))[:12]}…), not against {reference_ckpt} "
            f"({expected[:12]}…); train one with train_disc.py lm_ckpt={reference_ckpt}"
        )
    return ReverseKLLoss(q0, disc, disc_ckpt["lmdisc"]["config"]["discriminator"])
