"""trainer=fsdp: FSDP2 through ModelParallelStrategy on two CPU processes (gloo), against DDP on the
same data: the same weights after 5 SGD steps, the same logged gradient norms, sharded checkpoint
directories that consolidate into a file eval.py reads."""

import csv
import json

import pytest
import torch

from helpers import compose_train, gpt_overrides, quick_overrides, run_cli
from lmdisc.cli.eval import evaluate
from lmdisc.errors import LmdiscError
from lmdisc.models.base import LanguageModelBase
from lmdisc.sharding import shardable

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

MODELS = {
    "gpt": lambda corpus: [*gpt_overrides(corpus), "model.dropout=0.0"],
    "lstm": lambda corpus: [*quick_overrides(corpus), "model.tie_weights=true"],
    # one FSDP unit per layer; its dropouts off so that both runs draw nothing
    "awd_lstm": lambda corpus: [
        *quick_overrides(corpus, "awd_lstm"),
        "model.emb_size=32",
        "model.hidden_size=48",
        *(f"model.{p}=0.0" for p in ("dropout", "dropouth", "dropouti", "dropoute", "wdrop")),
    ],
}
FIVE_SGD_STEPS = [
    "optim=sgd",
    "optim.optimizer.lr=0.5",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=5",
    "trainer.log_every_n_steps=1",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
]


def _grad_norms(out) -> list[float]:
    with open(out / "csv" / "version_0" / "metrics.csv") as handle:
        return [float(row["train/grad_norm"]) for row in csv.DictReader(handle) if row.get("train/grad_norm")]


@pytest.mark.parametrize("model", list(MODELS))
def test_fsdp_trains_like_ddp_and_its_sharded_checkpoint_consolidates(tiny_corpus, tmp_path, model):
    overrides = [*MODELS[model](tiny_corpus), *FIVE_SGD_STEPS]
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    run_cli("lmdisc.cli.train", [*overrides, "trainer=ddp"], tmp_path, ddp)
    run_cli("lmdisc.cli.train", [*overrides, "trainer=fsdp"], tmp_path, fsdp)

    sharded = fsdp / "checkpoints" / "last.ckpt"
    assert sharded.is_dir() and (fsdp / "checkpoints" / "best.ckpt").is_dir()
    assert not list((fsdp / "checkpoints").glob(".*"))  # no partial directory left behind
    whole = tmp_path / "fsdp_last.ckpt"
    run_cli("lmdisc.cli.consolidate", [f"ckpt={sharded}", f"out={whole}"], tmp_path, tmp_path / "consolidate")

    ckpt_fsdp = torch.load(whole, weights_only=True)
    ckpt_ddp = torch.load(ddp / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt_fsdp["global_step"] == ckpt_ddp["global_step"] == 5
    a, b = ckpt_ddp["state_dict"], ckpt_fsdp["state_dict"]
    assert a.keys() == b.keys()
    difference = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert difference <= 1e-5, difference
    # the logged gradient norm is the whole model's under FSDP too, not one shard's
    assert _grad_norms(fsdp) == pytest.approx(_grad_norms(ddp), rel=1e-4)

    # eval.py reads the consolidated file and the sharded directory alike, with the run's own numbers
    metrics = json.loads((fsdp / "metrics.json").read_text())
    for ckpt in (whole, sharded):
        again = evaluate(compose_train(tmp_path / "eval", [f"ckpt={ckpt}"], "eval"))
        assert again["test/ppl"] == pytest.approx(metrics["test/ppl"], rel=1e-6)


def test_a_model_without_units_to_shard_is_refused_by_name():
    class Opaque(LanguageModelBase):
        pass

    with pytest.raises(LmdiscError, match=r"trainer=fsdp cannot shard Opaque: it names no units"):
        shardable(Opaque())
