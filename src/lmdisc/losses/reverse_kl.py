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
import torch.nn.functional as F
from torch import nn

from lmdisc.errors import LmdiscError
from lmdisc.models.discriminator import Discriminator
from lmdisc.window_loop import Reader

from .base import BatchContext, LossOutput
from .chunked_rkl import FrozenChunks, chunked_ce_reverse_kl


def reverse_kl_terms(
    log_q: torch.Tensor, log_q0: torch.Tensor, s: torch.Tensor | None, mask: torch.Tensor
) -> torch.Tensor:
    """Per-position Σ_v q [log q − log q0 − s] ([B, T], zero where `mask` is False); the plain
    autograd reference that `_ReverseKLTerm` must agree with."""
    inner = log_q - log_q0
    if s is not None:
        inner = inner - s
    return (log_q.exp() * inner).sum(-1) * mask


class _ReverseKLTerm(torch.autograd.Function):
    """T = Σ_v q_v d_v with d = log q − c (c constant: log q0 + s, up to a per-position shift) and
    q = softmax(z), with the closed-form gradient ∂T/∂z_j = q_j (d_j − T).

    Autograd through log_softmax, exp, the product and the sum makes several extra passes over the
    [B, T, V] tensors; this takes one, and it reuses the step's shared log-probs. Its backward
    overwrites d (made for it alone), so a second backward through it is refused.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, q: torch.Tensor, d: torch.Tensor):
        per_position = (q * d).sum(-1)  # (linalg.vecdot runs as a slow batched gemv on CPU)
        ctx.save_for_backward(q, d, per_position)
        ctx.logits_dtype = logits.dtype
        return per_position

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if getattr(ctx, "used", False):
            raise RuntimeError("the rkl term's backward overwrites its buffers: it cannot run twice")
        ctx.used = True
        q, d, per_position = ctx.saved_tensors
        grad_logits = d.sub_(per_position.unsqueeze(-1)).mul_(q).mul_(grad.unsqueeze(-1))
        return grad_logits.to(ctx.logits_dtype), None, None


class ReverseKLLoss:
    """The rKL term for `loss=rkl_disc`, reading each window with q_0 and the discriminator (their
    states carried through `Reader`s, like the model's; none for transformers).

    `reference` and `discriminator` are frozen `forward(tokens, state) -> (out, state, extras)`
    modules (the discriminator's `out` is s). They are not nn.Module attributes of the
    LightningModule, so they stay out of its state dict, its optimiser and DDP's gradient sync.
    A `lm_frozen` discriminator whose body is q_0's own reuses q_0's features (one body pass).
    With `ce_chunk_size` there are no logits: CompositeLoss calls `chunked` instead, which computes
    the term with the cross-entropy chunk by chunk from the features (chunked_rkl.py).
    """

    def __init__(
        self,
        reference: nn.Module,
        discriminator: nn.Module | None = None,
        discriminator_run_config: dict | None = None,
    ):
        self.reference = reference.eval().requires_grad_(False)
        # train_disc.py's resolved config (discriminator, optim, trainer): how to re-train it on a refresh
        self.discriminator_run_config = discriminator_run_config or {}
        self.discriminator = discriminator.eval().requires_grad_(False) if discriminator is not None else None
        self.shared_body = bool(
            discriminator is not None
            and hasattr(discriminator, "shares_body_with")
            and hasattr(reference, "decode")
            and discriminator.shares_body_with(reference)
        )
        self._reference_reader = Reader(self.reference, getattr(reference, "carries_state", True))
        self._discriminator_reader = (
            Reader(self.discriminator, getattr(discriminator, "carries_state", True))
            if discriminator
            else None
        )
        self._bucket_onehot: torch.Tensor | None = None
        self._bucket_names: list[str] = []

    def bind_corpus(self, corpus) -> None:
        """Group the vocabulary by training-set frequency, so each step logs the probability mass
        fine-tuning has moved into (or out of) each bucket: mean_c Σ_{v in bucket} (q_θ − q_0)."""
        from lmdisc.analysis.frequency import token_classes

        classes, self._bucket_names = token_classes(corpus["train"].ids, self.reference.vocab_size)
        self._bucket_onehot = torch.nn.functional.one_hot(classes, len(self._bucket_names)).float()

    def _to(self, device: torch.device) -> None:
        if next(self.reference.parameters()).device != device:
            self.reference.to(device)
            if self.discriminator is not None:
                self.discriminator.to(device)

    @torch.no_grad()
    def _frozen_outputs(self, inputs: torch.Tensor, first_window: bool, diagnostics: bool):
        """(c, lse0, log_q0, s) with c = z_0 + s: q_0's logits plus the discriminator's scores, i.e.
        log q_0 + s + lse0 where lse0 = logsumexp(z_0) per position. The term's gradient needs only
        c (a per-position constant cancels) and its value adds lse0 back, so q_0 is never
        normalised over [B, T, V]; log_q0 and s on their own are made for diagnostics only."""
        readers = [self._reference_reader, self._discriminator_reader]
        if first_window:
            for reader in filter(None, readers):
                reader.reset()
        s = None
        if self.shared_body:
            features, _ = self._reference_reader(inputs, self.reference.features)
            c = self.reference.decode(features).float()
        else:
            ref_logits, _ = self._reference_reader(inputs)
            c = ref_logits.float()
        lse0 = torch.logsumexp(c, dim=-1)
        log_q0 = c - lse0.unsqueeze(-1) if diagnostics else None
        if self.discriminator is not None:
            if self.shared_body and not diagnostics:
                self.discriminator.add_scores_(c, features)
            else:
                if self.shared_body:
                    s = self.discriminator.scores(features).float()
                else:
                    s, _ = self._discriminator_reader(inputs)
                    s = s.float()
                c.add_(s)
        return c, lse0, log_q0, s if diagnostics else None

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, ctx: BatchContext) -> LossOutput:
        if logits is None:
            raise LmdiscError(
                "the rkl term has no logits: with ce_chunk_size it runs inside CompositeLoss (loss=rkl_disc), "
                "which computes it together with the cross-entropy"
            )
        self._to(logits.device)
        c, lse0, log_q0, s = self._frozen_outputs(ctx.inputs, ctx.first_window, ctx.diagnostics)
        log_q = ctx.log_probs(logits).detach()
        mask = targets != ctx.ignore_index
        count = mask.sum().clamp_min(1)
        with torch.no_grad():
            q = log_q.exp()
            d = log_q - c
            logs = {}
            if ctx.diagnostics:  # only on steps whose logs are kept: each is a pass over [B, T, V]
                if s is not None:
                    logs["mean_s_under_q"] = ((q * s).sum(-1) * mask).sum() / count
                if self._bucket_onehot is not None:
                    logs.update(self._mass_moved(q, log_q0, mask, count))
        per_position = _ReverseKLTerm.apply(logits, q, d) + lse0
        term = (per_position * mask).sum() / count
        if ctx.diagnostics:
            # Σ q (log q − log q0) = Σ q (log q − log q0 − s) + Σ q s
            logs["kl_q_q0"] = term.detach() + logs.get("mean_s_under_q", 0.0)
        return LossOutput(term, logs)

    @torch.no_grad()
    def _frozen_chunks(self, inputs: torch.Tensor, first_window: bool) -> FrozenChunks:
        """q_0's logits and s per chunk of positions: the window-wide work (q_0's body, the
        discriminator's encoder) runs once, the [n, V] output layers per chunk. A reference without a
        linear output layer, or a discriminator that is not ours, is run whole and sliced per chunk
        (its [B, T, V] output then lives for the step; a frequency-class s is a free broadcast view)."""
        readers = [self._reference_reader, self._discriminator_reader]
        if first_window:
            for reader in filter(None, readers):
                reader.reset()
        layer = self.reference.output_layer() if hasattr(self.reference, "output_layer") else None
        features = None
        if layer is not None:
            features, _ = self._reference_reader(inputs, self.reference.features)
            flat = features.reshape(-1, features.shape[-1])

            def logits(start: int, stop: int) -> torch.Tensor:
                return F.linear(flat[start:stop], *layer).float()

        else:
            whole, _ = self._reference_reader(inputs)
            whole = whole.reshape(-1, whole.shape[-1])

            def logits(start: int, stop: int) -> torch.Tensor:
                return whole[start:stop].to(torch.float32, copy=True)

        disc = self.discriminator
        if disc is None:
            return FrozenChunks(logits)
        if isinstance(disc, Discriminator):
            if self.shared_body and features is not None:
                encoded = features
            else:
                encoded, _ = self._discriminator_reader(
                    inputs, lambda x, state: (*disc.encoder(x, state), {})
                )
            encoded = encoded.reshape(-1, encoded.shape[-1])

            def scores(start: int, stop: int) -> torch.Tensor:
                return disc.scores(encoded[start:stop]).float()

        else:
            s, _ = self._discriminator_reader(inputs)
            s = s.reshape(-1, s.shape[-1])

            def scores(start: int, stop: int) -> torch.Tensor:
                return s[start:stop].float()

        return FrozenChunks(logits, scores)

    def chunked(
        self, targets: torch.Tensor, ctx: BatchContext, nll_weight: float, weight: float
    ) -> LossOutput:
        """The term from `ctx.features` and `ctx.output_layer`, computed with the NLL in one chunked
        pass (`chunked_rkl.py`) for a loss nll_weight·Σ NLL + weight·term; the NLL goes to `ctx` for
        the cross-entropy terms. Same value, gradients and logs as `__call__` on the logits."""
        features = ctx.features
        self._to(features.device)
        frozen = self._frozen_chunks(ctx.inputs, ctx.first_window)
        mask = targets != ctx.ignore_index
        count = mask.sum().clamp_min(1)
        diag = None
        if ctx.diagnostics:
            diag = {"s_under_q": torch.zeros((), device=features.device)}
            if self._bucket_onehot is not None:
                vocab = self._bucket_onehot.shape[0]
                diag.update({key: torch.zeros(vocab, device=features.device) for key in ("q_sum", "q0_sum")})
        out_weight, out_bias = ctx.output_layer
        nll_sum, term_sum, nll, _ = chunked_ce_reverse_kl(
            features,
            out_weight,
            out_bias,
            targets,
            frozen,
            ctx.chunk_size,
            nll_weight,
            weight / count.item(),
            diag,
        )
        ctx.set_nll(nll_sum, nll)
        term = term_sum / count
        logs = {}
        if diag is not None:
            if self.discriminator is not None:
                logs["mean_s_under_q"] = diag["s_under_q"] / count
            if "q_sum" in diag:
                per_bucket = (
                    (diag["q_sum"] - diag["q0_sum"]) @ self._bucket_onehot.to(features.device) / count
                )
                logs.update({f"mass_moved/{name}": v for name, v in zip(self._bucket_names, per_bucket)})
            logs["kl_q_q0"] = term.detach() + logs.get("mean_s_under_q", 0.0)
        return LossOutput(term, logs)

    def _mass_moved(
        self, q: torch.Tensor, log_q0: torch.Tensor, mask: torch.Tensor, count: torch.Tensor
    ) -> dict:
        """Σ over positions first (one [V] vector per model), then over each bucket's words."""
        weights = mask.reshape(1, -1).to(q.dtype)
        moved = weights @ q.reshape(-1, q.shape[-1]) - weights @ log_q0.reshape(-1, q.shape[-1]).exp()
        per_bucket = (moved @ self._bucket_onehot.to(q.device)).squeeze(0) / count
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
        check_discriminator_of,
        checkpoint_tokenizer,
        load_discriminator,
        load_lm_checkpoint,
        weights_sha256,
    )

    if not reference_ckpt:
        raise LmdiscError("loss=rkl_disc fine-tunes a trained LM: set init_from=PATH (it also becomes q_0)")
    if discriminator not in ("ckpt", "none"):
        raise LmdiscError(f"loss.discriminator must be ckpt or none, got {discriminator!r}")
    reference = load_lm_checkpoint(reference_ckpt, "init_from")
    q0 = build_model(reference)
    if discriminator == "none":
        return ReverseKLLoss(q0, None)
    if not discriminator_ckpt:
        raise LmdiscError(
            "loss=rkl_disc needs loss.discriminator_ckpt=PATH (from train_disc.py), or loss.discriminator=none "
            "for the s = 0 control"
        )
    disc, disc_ckpt = load_discriminator(discriminator_ckpt)
    check_discriminator_of(
        disc_ckpt,
        discriminator_ckpt,
        weights_sha256(q0.state_dict()),
        checkpoint_tokenizer(reference),
        reference_ckpt,
    )
    return ReverseKLLoss(q0, disc, disc_ckpt["lmdisc"]["config"])
