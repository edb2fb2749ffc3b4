"""A model's parameters by depth: embeddings (layer 0), blocks 1..L, the head (L+1).

Layer-wise learning-rate decay (ELECTRA, BEiT) scales layer l's rate by decay^(L+1-l): the head
keeps the base rate and each step down the stack multiplies it by `decay`. Gradual unfreezing
(ULMFiT) thaws the same layers from the top. A weight shared by the embedding and the output layer
belongs to the embedding (layer 0). The grouping is by parameter identity, so it works for any
model that lists its blocks and head (`LanguageModelBase.blocks`, `head_parameters`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lmdisc.errors import LmdiscError


@dataclass
class LayerMap:
    """`layers[l]`: the parameters of layer l (0 = embeddings and anything outside blocks and head)."""

    layers: list[list[nn.Parameter]]

    @property
    def depth(self) -> int:
        """The number of blocks L (layers hold L + 2 entries)."""
        return len(self.layers) - 2

    def index(self) -> dict[int, int]:
        return {id(p): layer for layer, params in enumerate(self.layers) for p in params}

    def top_down(self) -> list[list[nn.Parameter]]:
        """Head first, then the blocks from the top, then the embeddings (unfreezing order)."""
        return list(reversed(self.layers))


def layer_map(model) -> LayerMap:
    blocks = model.blocks()
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    assigned: dict[int, int] = {}
    for layer, block in enumerate(blocks, start=1):
        for param in block.parameters():
            assigned.setdefault(id(param), layer)
    for param in model.head_parameters():
        if id(param) not in embedding_ids:
            assigned.setdefault(id(param), len(blocks) + 1)
    layers: list[list[nn.Parameter]] = [[] for _ in range(len(blocks) + 2)]
    seen: set[int] = set()
    for param in model.parameters():
        if id(param) not in seen:
            seen.add(id(param))
            layers[assigned.get(id(param), 0)].append(param)
    return LayerMap(layers)


def optimizer_groups(model, layer_decay: float, lr: float, layers: LayerMap | None = None) -> list[dict]:
    """The model's own decay / no-decay groups, each split by layer with lr · decay^(L+1-l).

    Each group keeps its `weight_decay` setting (the no-decay group's 0), so weight decay still
    applies to the decay group only. With decay 1 the model's groups are returned unchanged.
    """
    if not 0 < layer_decay <= 1:
        raise LmdiscError(f"optim.layer_decay must be in (0, 1], got {layer_decay!r}")
    groups = model.parameter_groups()
    if layer_decay == 1:
        return groups
    layers = layers or layer_map(model)
    index, top = layers.index(), layers.depth + 1
    out = []
    for group in groups:
        by_layer: dict[int, list[nn.Parameter]] = {}
        for param in group["params"]:
            by_layer.setdefault(index.get(id(param), 0), []).append(param)
        for layer in sorted(by_layer):
            scale = layer_decay ** (top - layer)
            name = f"{group.get('group', 'params')}/layer{layer}"
            out.append({**group, "params": by_layer[layer], "lr": lr * scale, "group": name})
    return out
