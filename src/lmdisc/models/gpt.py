"""GPT: a decoder-only transformer in GPT-2's layout, in one readable file (after nanoGPT's model.py).

Learned positions, pre-norm blocks (LayerNorm -> causal self-attention -> residual, LayerNorm ->
GELU MLP -> residual), a final LayerNorm and an output layer tied to the token embedding. Every
name and shape maps one-to-one onto transformers' `GPT2LMHeadModel` (`lmdisc.export`), which then
gives the same logits. Residual projections start at std 0.02/sqrt(2·n_layer) (GPT-2's scaled
initialisation), so the residual stream's variance does not grow with depth at the start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import LanguageModelBase, State
from .embedding import TokenEmbedding


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int = 256  # maximum positions
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = True  # GPT-2 has biases in every linear layer and LayerNorm
    input_only_tokens: int = 0  # ids read but never predicted (a word tokenizer's <blank>)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    tie_weights: bool = True  # output layer = token embedding (GPT-2); false: its own (finetune.mode=head)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd ({config.n_embd}) must be a multiple of n_head ({config.n_head})")
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout = config.n_head, config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.c_attn(x).split(width, dim=2)
        q, k, v = (
            t.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2) for t in (q, k, v)
        )
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(batch, length, width)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # exact GELU: exported as activation_function="gelu"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(LanguageModelBase):
    """forward(tokens, state=None) -> (logits, None, {}): a transformer has no state to carry."""

    carries_state = False

    def __init__(self, vocab_size: int, **options):
        super().__init__()
        config = GPTConfig(vocab_size=vocab_size, **options)
        self.config = config
        self.vocab_size = vocab_size
        self.max_positions = config.block_size
        self.feature_size = config.n_embd
        self.wte = TokenEmbedding(vocab_size, config.n_embd, config.input_only_tokens)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = None if config.tie_weights else nn.Linear(config.n_embd, vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # the residual projections: GPT-2's scaled init
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def features(self, tokens: torch.Tensor, state: State = None):
        length = tokens.shape[1]
        if length > self.config.block_size:
            raise ValueError(
                f"a window of {length} tokens is longer than block_size {self.config.block_size}"
            )
        positions = torch.arange(length, device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(positions))
        for block in self.h:
            if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.ln_f(x), None, {}

    def blocks(self) -> list[nn.Module]:
        return list(self.h)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.output_layer()[0])

    def output_layer(self):
        return (self.wte.weight if self.lm_head is None else self.lm_head.weight), None

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.ln_f.parameters(), self.output_layer()[0]]

    def untie_output(self) -> dict:
        """A separate output layer starting from the embedding's values (the same logits)."""
        if self.lm_head is not None:
            return {}
        self.lm_head = nn.Linear(self.config.n_embd, self.vocab_size, bias=False)
        self.lm_head.to(self.wte.weight.device)
        with torch.no_grad():
            self.lm_head.weight.copy_(self.wte.weight)
        self.config.tie_weights = False
        return {"tie_weights": False}
