"""The blocks protocol: training blocks and strided evaluation (every token scored once, longest context)."""

import math

import pytest
import torch

from lmdisc.data.blocks import StridedWindows, TrainingBlocks, collate_windows, epoch_offset, strided_spans
from lmdisc.data.corpus import TokenizedSplit
from lmdisc.data.protocols import BlockProtocol
from lmdisc.data.window import IGNORE_INDEX
from lmdisc.errors import LmdiscError
from lmdisc.evaluation import evaluate_windows


def _split(n: int, words: torch.Tensor | None = None) -> TokenizedSplit:
    ids = torch.arange(n) % 50
    weight = torch.ones(n) if words is None else words
    return TokenizedSplit(ids, weight, torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize(
    "n,block,stride", [(100, 16, 8), (100, 16, 16), (101, 16, 5), (10, 16, 8), (17, 16, 1)]
)
def test_every_target_is_scored_once_with_the_longest_context_the_grid_gives(n, block, stride):
    windows = StridedWindows(torch.arange(n), torch.ones(n), block, stride)
    scored = []
    for k in range(len(windows)):
        w = windows[k]
        keep = w.targets != IGNORE_INDEX
        begin = int(w.inputs[0])
        assert w.inputs.numel() <= block and torch.equal(
            w.inputs, torch.arange(begin, begin + w.inputs.numel())
        )
        assert torch.equal(w.targets[keep], w.positions[keep])  # the stream is arange: target = position
        for position in w.positions[keep].tolist():
            # its context is x[begin:position]: everything before it, or at least block - stride + 1 tokens
            assert position - begin >= min(position, block - stride + 1)
        scored.extend(w.positions[keep].tolist())
    assert sorted(scored) == list(range(1, n))


def test_stride_equal_to_the_context_gives_disjoint_windows():
    spans = strided_spans(65, 16, 16)
    assert [(b, e) for b, e, _ in spans] == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert all(first == begin + 1 for begin, _, first in spans)


def test_uniform_model_gives_perplexity_v_and_word_level_on_a_hand_made_text():
    V = 50

    class Uniform(torch.nn.Module):
        carries_state = False

        def forward(self, tokens, state=None):
            return torch.zeros(*tokens.shape, V), None, {}

    # 41 tokens; words end at every third token: 40 scored targets, 13 words ending among them
    words = torch.tensor([1.0 if i % 3 == 2 else 0.0 for i in range(41)])
    protocol = BlockProtocol(block_size=8, eval_stride=3)
    result = evaluate_windows(Uniform(), protocol.loader(_split(41, words), 4), carry_state=False)
    assert result["tokens"] == 40 and result["words"] == 13
    assert result["ppl"] == pytest.approx(V)
    assert result["word_ppl"] == pytest.approx(math.exp(40 * math.log(V) / 13))


def test_training_blocks_start_at_an_epoch_offset_and_ranks_share_them_out():
    split = _split(1000)
    protocol = BlockProtocol(block_size=32, seed=3)
    offsets = {epoch_offset(3, epoch, 32, 1000) for epoch in range(8)}
    assert len(offsets) > 1 and all(0 <= o < 32 for o in offsets)
    # a stream barely longer than a block still gives one block whatever the epoch
    assert all(
        len(TrainingBlocks(split.ids[:40], split.word_weight[:40], 32, epoch_offset(3, e, 32, 40))) == 1
        for e in range(20)
    )
    blocks = TrainingBlocks(split.ids, split.word_weight, 32, epoch_offset(3, 0, 32, 1000))
    assert all(torch.equal(blocks[k].targets[:-1], blocks[k].inputs[1:]) for k in range(len(blocks)))
    ranks = [list(protocol.loader(split, 4, train=True, rank=r, world=2)) for r in range(2)]
    firsts = [
        {int(w.positions[i, 0]) for w in batches for i in range(w.positions.shape[0])} for batches in ranks
    ]
    assert not firsts[0] & firsts[1] and len(firsts[0] | firsts[1]) == len(blocks)


@pytest.mark.parametrize("n", [300, 301, 333])
def test_evaluation_windows_are_shared_between_ranks_without_repeats(n):
    split = _split(n)
    seen, batches = [], []
    for rank in range(3):
        loader = BlockProtocol(32, 8).loader(split, 2, rank=rank, world=3)
        batches.append(len(loader))
        for window in loader:
            seen.extend(window.positions[window.targets != IGNORE_INDEX].tolist())
            assert (window.words[window.targets == IGNORE_INDEX] == 0).all()
    assert sorted(seen) == list(range(1, n))
    # as many batches on every rank (FSDP runs a collective in every forward), padding scoring nothing
    assert len(set(batches)) == 1


def test_collate_pads_short_windows_with_ignored_targets():
    windows = StridedWindows(torch.arange(10), torch.ones(10), 16, 8)  # one window of 9 inputs
    short = windows[0]
    batch = collate_windows([short, StridedWindows(torch.arange(20), torch.ones(20), 16, 8)[0]])
    assert batch.inputs.shape == (2, 16)
    assert (batch.targets[0, 9:] == IGNORE_INDEX).all() and (batch.positions[0, 9:] == -1).all()


@pytest.mark.parametrize("stride", [0, -1, 17, 2.5])
def test_a_bad_stride_is_refused(stride):
    with pytest.raises(LmdiscError, match="eval_stride"):
        BlockProtocol(16, stride)


def test_a_block_longer_than_the_training_text_is_refused():
    with pytest.raises(LmdiscError, match="longer than the training text"):
        BlockProtocol(64).loader(_split(40), 2, train=True)


def test_stride_equal_to_the_context_is_the_loss_of_disjoint_blocks():
    from lmdisc.models import GPT

    torch.manual_seed(0)
    model = GPT(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16).eval()
    split = _split(41)
    result = evaluate_windows(model, BlockProtocol(8, 8).loader(split, 3), carry_state=False)
    total, count = 0.0, 0
    with torch.no_grad():
        for begin in range(0, 40, 8):
            inputs = split.ids[begin : begin + 8]
            targets = split.ids[begin + 1 : begin + 9]
            logits = model(inputs[None])[0][0, : len(targets)]
            total += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            count += len(targets)
    assert result["tokens"] == count == 40
    assert result["loss"] == pytest.approx(total / count, rel=1e-6)
