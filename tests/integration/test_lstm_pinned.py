"""The LSTM numbers do not move: a seeded LSTM trained and evaluated here reproduces perplexities
recorded before the model-agnostic redesign (tokenizers, window protocols, one window loop).

Everything runs in float64 on one thread, so the numbers are the same on any x86 CPU: in fp32,
kernel differences between machines (AVX2 vs AVX-512 summation orders) grow through training
to more than the 1e-6 tolerance.
"""

import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_train, quick_overrides
from lmdisc.checkpoint import build_model, load_checkpoint, load_lm_weights
from lmdisc.cli.train import train
from lmdisc.evaluation import evaluate_splits

pytestmark = pytest.mark.slow

# printed by this test at commit "LSTM numbers pinned before the redesign" (the pre-redesign code)
PINNED = {"valid": 173.86630313106875, "test": 180.29649003085026}


def test_lstm_standard_protocol_is_unchanged(tmp_path, tiny_corpus):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        overrides = [
            *quick_overrides(tiny_corpus),
            "trainer.precision=64-true",
            "trainer.max_epochs=2",
            "optim.optimizer.lr=5",
            "data.train_eval_tokens=0",
            "model.emb_size=64",
            "model.hidden_size=64",
            "seed=11",
            "logger=none",
            "evaluate=false",
        ]
        train(compose_train(tmp_path, overrides))
        ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
        model = load_lm_weights(build_model(ckpt).double(), ckpt)  # the fp64 weights, not fp32-rounded
        datamodule = instantiate(compose_train(tmp_path, overrides).data)
        results = evaluate_splits(model, datamodule, "cpu", buckets=False, progress=None)
    finally:
        torch.set_num_threads(threads)
    measured = {split: results[split]["ppl"] for split in ("valid", "test")}
    print(f"pinned LSTM perplexities: {measured!r}")
    for split, value in PINNED.items():
        assert measured[split] == pytest.approx(value, rel=1e-6), split
