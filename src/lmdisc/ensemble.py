"""Ensembles of language models: the mixture p(v) = Σ_k w_k p_k(v) of the members' next-token
*probabilities* (averaging logits would be a product of experts, another model).

`EnsembleLM` is a language model like any other: its forward returns log p(v), which are valid
logits (log_softmax leaves them unchanged), and its state is the tuple of its members' states, so
recurrent members carry theirs. The protocol follows the members: if every member carries state
the split is read as one stream (the standard protocol), otherwise by sliding blocks, where a
recurrent member starts each window from a zero state (it sees the window's context only).

`eval.py "ensemble=[a.ckpt,b.ckpt]"` reads each split once, keeps every member's log-probability of
each target, and computes from them the ensemble's perplexity, each member's own perplexity under
the same windows, and (`ensemble_weights=fit`) the mixture weights that maximise the validation
likelihood, fit by EM on validation only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from lmdisc.analysis.frequency import FrequencyBuckets
from lmdisc.checkpoint import build_model, checkpoint_tokenizer, datamodule_for_checkpoint, load_lm_checkpoint
from lmdisc.data.tokenizers import same_tokenizer_or_refuse
from lmdisc.errors import LmdiscError
from lmdisc.losses.base import at_least_fp32
from lmdisc.models.base import LanguageModelBase, State
from lmdisc.window_loop import Reader, read_windows

WEIGHT_MODES = ("uniform", "fit")
SAME_TOKENIZER_HINT = (
    "an ensemble mixes probabilities of the same tokens, so every member must use one tokenizer "
    "(train the others with data.tokenizer_from=<the first member's checkpoint>)"
)


class EnsembleLM(LanguageModelBase):
    """forward(tokens, state) -> (log Σ_k w_k softmax(logits_k), (state_1, ..., state_K), {})."""

    def __init__(self, members: Sequence[LanguageModelBase], weights: Sequence[float] | None = None):
        super().__init__()
        if not members:
            raise LmdiscError("an ensemble needs at least one member")
        sizes = {m.vocab_size for m in members}
        if len(sizes) != 1:
            raise LmdiscError(
                f"the ensemble's members predict different numbers of tokens {sorted(sizes)}: "
                "their distributions cannot be mixed"
            )
        self.members = nn.ModuleList(members)
        self.vocab_size = sizes.pop()
        self.feature_size = 0  # no single hidden state: features() refuses
        self.carries_state = all(getattr(m, "carries_state", True) for m in members)
        limits = [m.max_positions for m in members if getattr(m, "max_positions", None) is not None]
        self.max_positions = min(limits) if limits else None
        self.register_buffer("log_weights", torch.zeros(len(members), dtype=torch.float64), persistent=False)
        self.set_weights(weights if weights is not None else [1.0 / len(members)] * len(members))

    def set_weights(self, weights: Sequence[float]) -> None:
        weights = torch.as_tensor(list(weights), dtype=torch.float64)
        if weights.numel() != len(self.members) or not torch.isclose(weights.sum(), weights.new_tensor(1.0)):
            raise ValueError(
                f"{len(self.members)} mixture weights summing to 1 expected, got {weights.tolist()}"
            )
        self.log_weights = weights.log().to(self.log_weights.device)

    @property
    def weights(self) -> list[float]:
        return self.log_weights.exp().tolist()

    def features(self, tokens: torch.Tensor, state: State = None):
        raise LmdiscError(
            "an ensemble has no single hidden state: extract features from one member's checkpoint"
        )

    def _member_log_probs(self, tokens: torch.Tensor, state: State, new_states: list):
        """Yields each member's log-probabilities [B, T, V] (fp32 or wider), one member at a time so
        that only one member's vocabulary-sized tensor is alive; appends their new states."""
        states = state if state is not None else (None,) * len(self.members)
        for member, member_state in zip(self.members, states):
            carries = getattr(member, "carries_state", True)
            logits, member_state, _ = member(tokens, member_state if carries else None)
            new_states.append(member_state if carries else None)
            yield torch.log_softmax(at_least_fp32(logits), dim=-1)

    def forward(self, tokens: torch.Tensor, state: State = None):
        mixture, new_states = None, []
        for log_w, log_probs in zip(self.log_weights, self._member_log_probs(tokens, state, new_states)):
            term = log_probs + log_w.to(log_probs.dtype)
            mixture = term if mixture is None else torch.logaddexp(mixture, term)  # log Σ w p, stably
        return mixture, tuple(new_states), {}

    def target_log_probs(self, tokens: torch.Tensor, targets: torch.Tensor, state: State = None):
        """(each member's log-probability of each target [B, T, K] in fp64, new state, {}); an unscored
        target (IGNORE_INDEX) reads token 0's, to be masked out by the caller."""
        safe = targets.clamp(min=0).unsqueeze(-1)
        new_states: list = []
        columns = [
            lp.gather(-1, safe).squeeze(-1).double()
            for lp in self._member_log_probs(tokens, state, new_states)
        ]
        return torch.stack(columns, dim=-1), tuple(new_states), {}


# ---- weights ---------------------------------------------------------------------------------


def fit_weights(log_probs: torch.Tensor, tol: float = 1e-10, max_iter: int = 2000) -> tuple[list[float], int]:
    """Mixture weights maximising the mean log-likelihood of tokens whose member log-probabilities are
    the rows of `log_probs` [N, K], by EM from uniform weights; returns (weights, iterations).

    Written here because the libraries' mixture fitters (sklearn's) also fit the components; with
    fixed components EM is three lines: the responsibilities' mean is the next weight. Each step
    never lowers the likelihood, and the likelihood is concave in the weights, so EM approaches the
    global optimum (a vertex, i.e. one member, when that is best).
    """
    log_probs = log_probs.double()
    log_w = torch.full((log_probs.shape[1],), -math.log(log_probs.shape[1]), dtype=torch.float64)
    previous, iterations = -math.inf, 0
    while iterations < max_iter:
        iterations += 1
        joint = log_probs + log_w
        total = torch.logsumexp(joint, dim=1, keepdim=True)
        likelihood = float(total.mean())
        log_w = torch.logsumexp(joint - total, dim=0) - math.log(log_probs.shape[0])  # mean responsibility
        if likelihood - previous < tol:
            break
        previous = likelihood
    weights = log_w.exp()
    return (weights / weights.sum()).tolist(), iterations


def given_weights(option, count: int) -> list[float] | str:
    """`ensemble_weights`: `uniform`, `fit`, or one non-negative number per member (normalised)."""
    if isinstance(option, str):
        if option not in WEIGHT_MODES:
            raise LmdiscError(
                f"ensemble_weights must be uniform, fit or a list of {count} numbers, got {option!r}"
            )
        return [1.0 / count] * count if option == "uniform" else option
    values = list(option) if isinstance(option, (list, tuple, ListConfig)) else None
    if (
        values is None
        or len(values) != count
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        or not all(math.isfinite(v) and v >= 0 for v in values)
        or sum(values) <= 0
    ):
        raise LmdiscError(
            f"ensemble_weights must be uniform, fit or {count} finite numbers >= 0 (one per member, not all "
            f"0; they are normalised to sum to 1), got {option!r}"
        )
    return [v / sum(values) for v in values]


# ---- loading -------------------------------------------------------------------------------


def member_paths(option) -> list[str]:
    paths = [str(p) for p in option] if isinstance(option, (list, tuple, ListConfig)) else None
    if not paths:
        raise LmdiscError(
            f'ensemble must be a list of checkpoints, e.g. "ensemble=[a.ckpt,b.ckpt]", got {option!r}'
        )
    return paths


def load_ensemble(paths: Sequence[str]) -> tuple[EnsembleLM, list[dict]]:
    """The members' checkpoints as one `EnsembleLM` (uniform weights); tokenizers and the text they
    were trained on (detokenised or not) must agree, or the first disagreeing pair is refused."""
    ckpts = [load_lm_checkpoint(p, "ensemble") for p in paths]
    first = checkpoint_tokenizer(ckpts[0])
    detok = [
        bool(((c["lmdisc"].get("config") or {}).get("data") or {}).get("detokenize", False)) for c in ckpts
    ]
    for path, ckpt, flag in zip(paths[1:], ckpts[1:], detok[1:]):
        same_tokenizer_or_refuse(
            checkpoint_tokenizer(ckpt),
            first,
            f"ensemble member {path}",
            f"ensemble member {paths[0]}",
            SAME_TOKENIZER_HINT,
        )
        if flag != detok[0]:
            raise LmdiscError(
                f"ensemble member {path} was trained on {'de' if flag else ''}tokenised text and "
                f"{paths[0]} on {'de' if detok[0] else ''}tokenised text: they read different text"
            )
    return EnsembleLM([build_model(c) for c in ckpts]), ckpts


def ensemble_data_source(cfg: DictConfig, ensemble: EnsembleLM, paths: Sequence[str], ckpts: list[dict]):
    """(data config, the checkpoint whose tokenizer reads it, its path, whether the config is its own):
    `data=` when given, else the recorded data config of the first member read by the ensemble's
    protocol (a transformer's when the ensemble reads blocks, so its block size fits)."""
    if cfg.get("data") is not None:
        return cfg.data, ckpts[0], paths[0], False
    for path, ckpt, member in zip(paths, ckpts, ensemble.members):
        if getattr(member, "carries_state", True) == ensemble.carries_state:
            data = (ckpt["lmdisc"].get("config") or {}).get("data")
            if data:
                return data, ckpt, path, True
    raise LmdiscError(
        "the ensemble's checkpoints record no data config; pass data=ptb (or data=text data.path=DIR)"
    )


def load_ensemble_and_data(cfg: DictConfig):
    """(ensemble with the configured weights or "fit", datamodule, member paths)."""
    paths = member_paths(cfg.ensemble)
    weights = given_weights(cfg.get("ensemble_weights", "uniform"), len(paths))
    ensemble, ckpts = load_ensemble(paths)
    if weights != "fit":
        ensemble.set_weights(weights)
    data_cfg, ckpt, path, own = ensemble_data_source(cfg, ensemble, paths, ckpts)
    datamodule = datamodule_for_checkpoint(data_cfg, ckpt, f"ensemble member {path}", own_config=own)
    return ensemble, datamodule, paths, weights == "fit"


def scoring_ensemble(cfg: DictConfig):
    """(ensemble, tokenizer, data config as a dict) for `score_file`: weights must be given (fit reads
    a validation split, which scoring a file has not)."""
    paths = member_paths(cfg.ensemble)
    weights = given_weights(cfg.get("ensemble_weights", "uniform"), len(paths))
    if weights == "fit":
        raise LmdiscError(
            "ensemble_weights=fit needs a validation split: run eval.py with ensemble= and "
            "ensemble_weights=fit first, then score the file with the printed weights"
        )
    ensemble, ckpts = load_ensemble(paths)
    ensemble.set_weights(weights)
    data_cfg, ckpt, _, own = ensemble_data_source(cfg, ensemble, paths, ckpts)
    data = dict(data_cfg) if own else OmegaConf.to_container(data_cfg, resolve=True)
    return ensemble, checkpoint_tokenizer(ckpt), data


# ---- evaluation ------------------------------------------------------------------------------


@dataclass
class MemberScores:
    """Every member's log-probability of each scored target of a split, in text order of reading."""

    log_probs: torch.Tensor  # [N, K] fp64
    words: torch.Tensor  # [N] words each target ends
    positions: torch.Tensor  # [N] the target's index in its split
    seconds: float

    def nll(self, weights: Sequence[float]) -> torch.Tensor:
        """The mixture's negative log-likelihood of each target [N]."""
        log_w = torch.as_tensor(list(weights), dtype=torch.float64).log()
        return -torch.logsumexp(self.log_probs + log_w, dim=1)

    def metrics(self, nll: torch.Tensor) -> dict[str, float]:
        tokens, words = nll.numel(), float(self.words.sum())
        loss = float(nll.sum()) / max(tokens, 1)
        return {
            "loss": loss,
            "ppl": math.exp(loss),
            "word_ppl": math.exp(float(nll.sum()) / max(words, 1e-12)),
            "tokens": tokens,
            "words": words,
        }


@torch.inference_mode()
def score_members(ensemble: EnsembleLM, loader, device, carry: bool, progress=None) -> MemberScores:
    """One pass over a split's windows, keeping each member's log-probability of every scored target."""
    ensemble.eval()
    reader = Reader(ensemble, carry)
    parts, words, positions = [], [], []
    start = time.perf_counter()
    for window in read_windows(loader, device, progress):
        gathered, _ = reader(window.inputs, lambda x, s, t=window.targets: ensemble.target_log_probs(x, t, s))
        scored = window.scored
        parts.append(gathered[scored].cpu())
        words.append(window.words[scored].double().cpu())
        positions.append(window.positions[scored].cpu())
    empty = torch.zeros(0, len(ensemble.members), dtype=torch.float64)
    return MemberScores(
        torch.cat(parts) if parts else empty,
        torch.cat(words) if words else torch.zeros(0, dtype=torch.float64),
        torch.cat(positions) if positions else torch.zeros(0, dtype=torch.long),
        time.perf_counter() - start,
    )


def evaluate_ensemble(
    ensemble: EnsembleLM,
    datamodule,
    device,
    splits: Sequence[str],
    fit: bool,
    names: Sequence[str],
    progress=print,
) -> tuple[dict[str, dict], dict]:
    """({split: metrics with "buckets" and "members"}, how the weights were chosen). With `fit`, the
    weights are fit on the validation split's scores alone, then used for every split."""
    corpus = datamodule.load()
    if datamodule.protocol is None:
        datamodule.bind_model(ensemble)
    carry = datamodule.protocol.carries_state
    order = (["valid"] if fit else []) + [s for s in splits if not (fit and s == "valid")]
    scores: dict[str, MemberScores] = {}
    choice: dict = {"mode": "given"}
    for split in order:
        say = (lambda line, split=split: progress(f"evaluating {split}: {line}")) if progress else None
        scores[split] = score_members(ensemble, datamodule.split_loader(split), device, carry, say)
        if split == "valid" and fit:
            uniform = [1.0 / len(ensemble.members)] * len(ensemble.members)
            weights, iterations = fit_weights(scores["valid"].log_probs)
            ensemble.set_weights(weights)
            choice = {
                "mode": "fit",
                "fit_on": "valid",
                "em_iterations": iterations,
                "val_loss_uniform": float(scores["valid"].nll(uniform).mean()),
                "val_loss_fit": float(scores["valid"].nll(weights).mean()),
            }
            print(
                f"fitted mixture weights on validation in {iterations} EM steps: "
                + ", ".join(f"{n} {w:.4f}" for n, w in zip(names, weights))
                + f" (validation loss {choice['val_loss_fit']:.4f}, uniform {choice['val_loss_uniform']:.4f})"
            )
    results = {}
    for split in splits:
        split_scores = scores[split]
        nll = split_scores.nll(ensemble.weights)
        row = split_scores.metrics(nll)
        row["seconds"] = split_scores.seconds
        row["tokens_per_s"] = (
            row["tokens"] / split_scores.seconds if split_scores.seconds > 0 else float("nan")
        )
        bucketer = FrequencyBuckets(corpus["train"], corpus[split])
        bucketer.add(bucketer.word_count[split_scores.positions], nll, split_scores.words)
        row["buckets"] = bucketer.rows()
        row["members"] = [
            {"checkpoint": str(name), **split_scores.metrics(-split_scores.log_probs[:, k])}
            for k, name in enumerate(names)
        ]
        results[split] = row
    return results, choice


def print_members(results: dict[str, dict], weights: Sequence[float]) -> None:
    for split, row in results.items():
        for k, member in enumerate(row["members"]):
            print(
                f"{split}: member {k} ({member['checkpoint']}, weight {weights[k]:.4f}): "
                f"perplexity {member['ppl']:.2f} (word-level {member['word_ppl']:.2f}); ensemble {row['ppl']:.2f}"
            )
