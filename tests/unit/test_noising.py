"""Data noising (Xie et al. 2017): the training inputs alone are noised, at rate gamma, reproducibly."""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from lmdisc.data import LMDataModule
from lmdisc.data.noising import Noising, unigram_distribution
from lmdisc.errors import LmdiscError
from lmdisc.validation import validate

GAMMA = 0.2
VOCAB = 40
RECURRENT = SimpleNamespace(carries_state=True)
TRANSFORMER = SimpleNamespace(carries_state=False, max_positions=None)


@pytest.fixture(scope="module")
def zipf_corpus(tmp_path_factory):
    """~105k training tokens of 40 words with Zipf frequencies (a skewed, known unigram distribution)."""
    rng = np.random.default_rng(0)
    weights = 1.0 / np.arange(1, VOCAB + 1)
    directory = tmp_path_factory.mktemp("zipf")
    for split, lines in (("train", 5000), ("valid", 200), ("test", 200)):
        words = rng.choice(VOCAB, size=(lines, 20), p=weights / weights.sum())
        text = "".join(" ".join(f"w{w}" for w in row) + "\n" for row in words)
        (directory / f"{split}.txt").write_text(text)
    return directory


def _datamodule(path, model=RECURRENT, epoch=None, rank=0, **kwargs) -> LMDataModule:
    options = dict(batch_size=20, bptt=35, block_size=64, eval_batch_size=10, train_eval_tokens=500, seed=3)
    dm = LMDataModule(path=str(path), **{**options, **kwargs})
    if epoch is not None:  # what a (resumed) Trainer tells the data module
        dm.trainer = SimpleNamespace(current_epoch=epoch, global_rank=rank, world_size=2)
    dm.setup()
    dm.bind_model(model, training=True)
    return dm


def _windows(loader, epoch: int | None = None) -> list:
    if epoch is not None:  # as Lightning does before every training epoch
        loader.sampler.set_epoch(epoch)
    return list(loader)


def _binomial_bound(n: int, p: float) -> float:
    """Five standard deviations of a Binomial(n, p) count (a chance of about 6e-7 to fail by luck)."""
    return 5 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("model", [RECURRENT, TRANSFORMER], ids=["stream", "blocks"])
@pytest.mark.parametrize("kind", ["blank", "unigram"])
def test_replacement_rate_matches_gamma_and_targets_stay_clean(zipf_corpus, model, kind):
    clean_dm = _datamodule(zipf_corpus, model)
    noised_dm = _datamodule(zipf_corpus, model, noise=kind, noise_gamma=GAMMA)
    corpus_before = noised_dm.load()["train"].ids.clone()
    clean, noised = _windows(clean_dm.train_dataloader()), _windows(noised_dm.train_dataloader())
    assert len(clean) == len(noised)
    inputs, changed = [], []
    for a, b in zip(clean, noised):
        for field in ("targets", "words", "positions"):
            assert torch.equal(getattr(a, field), getattr(b, field))
        inputs.append(a.inputs.flatten())
        changed.append((a.inputs != b.inputs).flatten())
        if kind == "blank":  # every change is a blank, and nothing else is one
            assert torch.equal(a.inputs != b.inputs, b.inputs == noised_dm.tokenizer.blank_id)
    inputs, changed = torch.cat(inputs), torch.cat(changed)
    n = inputs.numel()
    assert n > 100_000
    expected = GAMMA
    if kind == "unigram":  # a draw gives back the token it replaces with probability q(token)
        q = unigram_distribution(noised_dm.load()["train"].ids, noised_dm.tokenizer.vocab_size)
        expected = GAMMA * (1 - float(q[inputs].mean()))
    assert abs(int(changed.sum()) - n * expected) < _binomial_bound(n, expected)
    assert torch.equal(noised_dm.load()["train"].ids, corpus_before)  # the corpus is never written


def test_unigram_draws_follow_the_training_unigram_distribution(zipf_corpus):
    dm = _datamodule(zipf_corpus, noise="unigram", noise_gamma=0.5)
    noising = dm.train_dataloader().dataset.noising
    # the distribution, counted here from the text: each word's share of the training tokens
    lines = (zipf_corpus / "train.txt").read_text().splitlines()
    counts = Counter(w for line in lines for w in [*line.split(), "<eos>"])
    total = sum(counts.values())
    words = dm.tokenizer.words
    assert torch.allclose(
        noising.unigram, torch.tensor([counts[w] / total for w in words], dtype=torch.float64)
    )
    inputs = torch.full((400_000,), dm.tokenizer.blank_id)
    noised, replaced = noising.apply(inputs, noising.generator(0, 0, 0))
    draws = noised[replaced]
    n = draws.numel()
    assert abs(n - 0.5 * inputs.numel()) < _binomial_bound(inputs.numel(), 0.5)
    assert torch.equal(noised[~replaced], inputs[~replaced])
    observed = torch.bincount(draws, minlength=len(words)).double()
    expected = noising.unigram * n
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    df = len(words) - 1
    assert chi2 < df + 6 * math.sqrt(2 * df)  # a uniform draw would give ~1e5
    assert float((observed / n - noising.unigram).abs().sum()) / 2 < 0.01  # total variation


def test_validation_test_train_eval_and_discriminator_text_are_never_noised(zipf_corpus):
    noised = _datamodule(zipf_corpus, noise="blank", noise_gamma=0.5)
    clean = _datamodule(zipf_corpus)
    loaders = lambda dm: [  # noqa: E731
        *dm.val_dataloader(),  # validation and the train_eval slice
        dm.split_loader("test"),
        dm.discriminator_loader("train", 0.5),
        dm.discriminator_loader("heldout", 0.5),
    ]
    for a_loader, b_loader in zip(loaders(clean), loaders(noised), strict=True):
        for a, b in zip(a_loader, b_loader, strict=True):
            assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    blank = noised.tokenizer.blank_id
    assert any((w.inputs == blank).any() for w in noised.train_dataloader())  # the training text is


def test_blank_is_the_tokenizers_input_only_blank(zipf_corpus):
    dm = _datamodule(zipf_corpus, noise="blank", noise_gamma=GAMMA)
    tokenizer = dm.tokenizer
    assert tokenizer.blank_id == tokenizer.vocab_size and tokenizer.input_only_tokens == 1
    noised = torch.cat([w.inputs.flatten() for w in dm.train_dataloader()])
    assert set(noised.unique().tolist()) == set(range(tokenizer.vocab_size + 1))
    assert tokenizer.decode([tokenizer.blank_id]) == "<blank>"


def test_gamma_zero_is_the_identity(zipf_corpus):
    for kind in ("blank", "unigram"):
        dm = _datamodule(zipf_corpus, noise=kind, noise_gamma=0.0)
        plain = _datamodule(zipf_corpus)
        for a, b in zip(plain.train_dataloader(), dm.train_dataloader(), strict=True):
            assert torch.equal(a.inputs, b.inputs)
    inputs = torch.arange(1000) % 7
    unigram = torch.full((7,), 1 / 7, dtype=torch.float64)
    noised, replaced = Noising("unigram", 0.0, 1, 7, unigram).apply(inputs, torch.Generator().manual_seed(0))
    assert torch.equal(noised, inputs) and not replaced.any()


@pytest.mark.parametrize("model", [RECURRENT, TRANSFORMER], ids=["stream", "blocks"])
def test_same_seed_and_epoch_same_noise_another_epoch_rank_or_seed_other_noise(zipf_corpus, model):
    def inputs(windows):
        return torch.cat([w.inputs.flatten() for w in windows])

    options = dict(model=model, noise="unigram", noise_gamma=GAMMA)
    # epoch 1 as an uninterrupted run reads it (the stream loader is built once and told the epoch;
    # the blocks loader is rebuilt every epoch) and as a run resumed at epoch 1 reads it
    first = _datamodule(zipf_corpus, epoch=0, **options)
    loader = first.train_dataloader()
    epoch0 = inputs(_windows(loader, 0))
    if not model.carries_state:
        first.trainer.current_epoch = 1
        loader = first.train_dataloader()
    epoch1 = inputs(_windows(loader, 1))
    resumed = inputs(_windows(_datamodule(zipf_corpus, epoch=1, **options).train_dataloader(), 1))
    assert torch.equal(epoch1, resumed)
    if model.carries_state:  # the same windows, noised afresh
        assert (epoch0 != epoch1).float().mean() > GAMMA
    rank1 = inputs(_windows(_datamodule(zipf_corpus, epoch=1, rank=1, **options).train_dataloader(), 1))
    seed4 = inputs(_windows(_datamodule(zipf_corpus, epoch=1, seed=4, **options).train_dataloader(), 1))
    for other in (rank1, seed4):
        assert other.shape != epoch1.shape or not torch.equal(other, epoch1)
    # a window's noise depends on its index alone, not on the order in which windows are read
    item = list(loader.sampler)[-1]
    assert torch.equal(loader.dataset[item].inputs, loader.dataset[item].inputs)


@pytest.mark.parametrize("gamma", [1.0, -0.1, 1.5, float("nan"), True, "0.2"])
def test_gamma_outside_zero_one_is_refused(zipf_corpus, gamma):
    message = r"data\.noise_gamma must be a number in \[0, 1\)"
    with pytest.raises(LmdiscError, match=message):
        LMDataModule(path=str(zipf_corpus), noise="blank", noise_gamma=gamma)
    with pytest.raises(LmdiscError, match=message):  # and before any work, by train.py's checks
        validate(OmegaConf.create({"data": {"noise": "blank", "noise_gamma": gamma}}))


def test_unknown_noise_is_refused_with_the_list(zipf_corpus):
    with pytest.raises(
        LmdiscError, match=r"data\.noise must be one of \['none', 'unigram', 'blank'\], got 'word'"
    ):
        LMDataModule(path=str(zipf_corpus), noise="word", noise_gamma=0.1)


def test_gamma_without_noise_warns_and_changes_nothing(zipf_corpus):
    dm = _datamodule(zipf_corpus, noise="none", noise_gamma=GAMMA)
    plain = _datamodule(zipf_corpus)
    with pytest.warns(UserWarning, match="no effect with data.noise=none"):
        loader = dm.train_dataloader()
    for a, b in zip(plain.train_dataloader(), loader, strict=True):
        assert torch.equal(a.inputs, b.inputs)


@pytest.mark.slow
def test_a_noised_run_trains_and_learns_the_blank_embedding(tmp_path, tiny_corpus):
    from helpers import compose_train, quick_overrides
    from lmdisc.cli.train import train

    overrides = [
        *quick_overrides(tiny_corpus),
        "data.noise=blank",
        f"data.noise_gamma={GAMMA}",
        "model.dropout=0.3",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        "logger=none",
    ]
    metrics = train(compose_train(tmp_path, overrides))
    assert metrics["global_step"] == 3 and math.isfinite(metrics["test/ppl"])
    state = torch.load(metrics["checkpoint"], weights_only=True)["state_dict"]
    blank_row = state["model.embedding.extra"]
    assert blank_row.shape == (1, 200) and blank_row.abs().sum() > 0  # read, and learnt from
