"""Weighted sum of loss terms, so presets compose (e.g. CE + alpha * another term)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lmdisc.errors import LmdiscError

from .base import BatchContext, Loss, LossOutput


class CompositeLoss:
    """`terms` maps a name to {"weight": float, "loss": Loss}; each term's value is logged by name.

    Extra keyword arguments are the preset's named hyperparameters (e.g. `alpha`) that the term
    weights interpolate, so `loss.alpha=0.1` works from the command line; numbers must be >= 0.
    """

    def __init__(self, terms: Mapping[str, Mapping], **hyperparameters: float | str):
        for key, value in hyperparameters.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise LmdiscError(f"loss.{key} must be >= 0, got {value!r}")
        if not terms:
            raise LmdiscError("loss.terms is empty: give at least one term, e.g. loss=ce")
        self.terms: dict[str, tuple[float, Loss]] = {}
        for name, term in terms.items():
            if "weight" not in term or term["weight"] is None:
                raise LmdiscError(f"loss term {name!r} has no weight; set loss.terms.{name}.weight")
            if "loss" not in term:
                raise LmdiscError(f"loss term {name!r} has no loss; set loss.terms.{name}.loss")
            if float(term["weight"]) < 0:
                raise LmdiscError(f"loss term {name!r} has weight {term['weight']} < 0")
            self.terms[name] = (float(term["weight"]), term["loss"])

    @property
    def needs_logits(self) -> bool:
        """False when the terms can run in chunks from the features: each needs only the summed NLL,
        or one is fused with that NLL in a chunked pass (`chunked`, the rkl term) and the others
        are linear in the sum (`nll_weight`), so the pass knows the NLL's weight in the loss."""
        fused = [fn for _, fn in self.terms.values() if hasattr(fn, "chunked")]
        others = [fn for _, fn in self.terms.values() if not hasattr(fn, "chunked")]
        if any(getattr(fn, "needs_logits", True) for fn in others):
            return True
        return bool(fused) and (len(fused) > 1 or not all(hasattr(fn, "nll_weight") for fn in others))

    def bind_corpus(self, corpus) -> None:
        """Hand the training corpus to the terms that use it (e.g. rkl's frequency buckets)."""
        for _, loss_fn in self.terms.values():
            if hasattr(loss_fn, "bind_corpus"):
                loss_fn.bind_corpus(corpus)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, ctx: BatchContext) -> LossOutput:
        outputs = {}
        if logits is None:  # chunked: a fused term runs first and leaves the NLL for the others
            for name, (weight, loss_fn) in self.terms.items():
                if hasattr(loss_fn, "chunked"):
                    nll_weight = sum(
                        w * fn.nll_weight(targets, ctx) for n, (w, fn) in self.terms.items() if n != name
                    )
                    outputs[name] = loss_fn.chunked(targets, ctx, nll_weight=nll_weight, weight=weight)
        total = None
        logs: dict[str, torch.Tensor] = {}
        for name, (weight, loss_fn) in self.terms.items():
            out = outputs[name] if name in outputs else loss_fn(logits, targets, ctx)
            weighted = weight * out.loss
            total = weighted if total is None else total + weighted
            logs[name] = out.loss.detach()
            logs.update({f"{name}/{k}": v for k, v in out.logs.items() if k != name})
        return LossOutput(total, logs)
