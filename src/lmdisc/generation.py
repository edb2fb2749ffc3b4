"""Sampling text from any of our language models (recurrent, GPT, pretrained), one loop for all.

A recurrent model reads the prompt once and then one new token per step, its state carried
through a `Reader`; a transformer re-reads its last `max_positions` tokens every step (no KV
cache: simple, and fast enough for the short samples this is for).
"""

from __future__ import annotations

import torch

from lmdisc.data.tokenizers import Tokenizer
from lmdisc.errors import LmdiscError
from lmdisc.window_loop import Reader


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's tokens, with no end of line after them (an empty prompt is an end of line: the
    model starts a new line)."""
    return tokenizer.encode_text(prompt)


def choose_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator,
) -> int:
    """One token from `logits` [V]: greedy at temperature 0, else sampled from the tempered
    distribution cut to its `top_k` tokens and/or its smallest `top_p` nucleus."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
        drop = cumulative - torch.softmax(sorted_logits, -1) >= top_p  # keep the first token past top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, -1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[int]:
    """`max_new_tokens` new token ids after the prompt `ids`."""
    if temperature < 0 or (top_p is not None and not 0 < top_p <= 1) or (top_k is not None and top_k < 1):
        raise LmdiscError("need temperature >= 0, top_k >= 1 and 0 < top_p <= 1")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    carry = getattr(model, "carries_state", True)
    limit = getattr(model, "max_positions", None)
    reader = Reader(model, carry)
    context = list(ids)
    new: list[int] = []
    pending = context
    for _ in range(max_new_tokens):
        window = pending if carry else context[-limit:] if limit else context
        logits, _ = reader(torch.tensor([window], device=device))
        token = choose_next(logits[0, -1], temperature, top_k, top_p, generator)
        new.append(token)
        context.append(token)
        pending = [token]
    return new
