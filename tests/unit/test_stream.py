import itertools

import numpy as np
import pytest
import torch

from lmdisc.data.stream import BPTTSampler, StreamDataset, bptt_windows, layout_stream
from lmdisc.data.window import IGNORE_INDEX


def _targets_in_order(batches, windows):
    dataset = StreamDataset(batches)
    cols = [[] for _ in range(batches.inputs.shape[0])]
    for window in windows:
        inputs, targets, _, _ = dataset[window]
        for c in range(inputs.shape[0]):
            cols[c].append((inputs[c], targets[c]))
    return cols


@pytest.mark.parametrize("n,batch_size,bptt", [(101, 4, 7), (1000, 10, 35), (37, 1, 5), (64, 7, 3)])
def test_every_token_but_the_first_is_a_target_exactly_once(n, batch_size, bptt):
    stream = torch.arange(n)
    batches = layout_stream(stream, batch_size)
    windows = bptt_windows(batches.length, bptt)
    seen = []
    for col in _targets_in_order(batches, windows):
        for inputs, targets in col:
            keep = targets != IGNORE_INDEX
            # targets are the inputs shifted by one position of the stream
            assert torch.equal(targets[keep], inputs[keep] + 1)
            seen.extend(targets[keep].tolist())
    assert sorted(seen) == list(range(1, n))


def test_columns_are_contiguous_and_read_in_order():
    batches = layout_stream(torch.arange(41), 4)
    assert batches.inputs[0].tolist() == list(range(10))
    assert batches.inputs[1, 0].item() == 10
    windows = bptt_windows(batches.length, 3)
    assert [w[0] for w in windows] == [0, 3, 6, 9]


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_rank_shards_are_disjoint_contiguous_and_cover_the_stream(world_size):
    n = 503
    stream = torch.arange(n)
    shards = [layout_stream(stream, 3, rank, world_size) for rank in range(world_size)]
    assert len({s.length for s in shards}) == 1, "every rank must run the same number of windows"
    per_rank = []
    for s in shards:
        t = s.targets.flatten()
        per_rank.append(t[t != IGNORE_INDEX].tolist())
    for a, b in itertools.pairwise(per_rank):
        assert max(a) < min(b)  # contiguous, in rank order, disjoint
    assert sorted(x for r in per_rank for x in r) == list(range(1, n))


def test_variable_bptt_follows_awd_rules_and_is_reproducible():
    windows = bptt_windows(10_000, 70, variable=True, rng=np.random.default_rng(0))
    lengths = [length for _, length in windows[:-1]]
    assert min(lengths) >= 5
    assert 60 < np.mean(lengths) < 72  # 95% around 70, 5% around 35
    assert any(length < 50 for length in lengths)  # the half-length draws happen
    starts = [s for s, _ in windows]
    assert starts == sorted(starts) and sum(length for _, length in windows) == 10_000
    a, b = BPTTSampler(10_000, 70, True, seed=3), BPTTSampler(10_000, 70, True, seed=3)
    a.set_epoch(5)
    b.set_epoch(5)
    assert list(a) == list(b)
    b.set_epoch(6)
    assert list(a) != list(b)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        layout_stream(torch.arange(10), 0)
    with pytest.raises(ValueError, match="bptt"):
        bptt_windows(10, 0)


def test_positions_and_word_weights_follow_the_targets():
    stream = torch.arange(50) * 3
    weights = torch.arange(50, dtype=torch.float32) / 10
    layout = layout_stream(stream, 4, word_weight=weights)
    scored = layout.targets != IGNORE_INDEX
    assert torch.equal(layout.targets[scored], stream[layout.positions[scored]])
    assert torch.equal(layout.words[scored], weights[layout.positions[scored]])
    assert (layout.positions[~scored] == -1).all() and (layout.words[~scored] == 0).all()
