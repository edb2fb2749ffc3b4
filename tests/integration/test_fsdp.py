"""trainer=fsdp: FSDP2 through ModelParallelStrategy on two CPU processes (gloo), against DDP on the
same data: the same weights after 5 SGD steps, the same logged gradient norms, sharded checkpoint
directories that consolidate into a file eval.py reads."""

import csv
import json

import pytest
import torch

from helpers import compose_train, gpt_overrides, hf_overrides, quick_overrides, run_cli
from lmdisc.cli.eval import evaluate
from lmdisc.errors import LmdiscError
from lmdisc.models.base import LanguageModelBase
from lmdisc.sharding import shardable

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

MODELS = {
    "gpt": lambda corpus: [*gpt_overrides(corpus), "model.dropout=0.0"],
    # an LSTM with tied weights and one FSDP unit per layer; its dropouts off so that both runs draw nothing
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


def _five_steps_under_ddp_and_fsdp(overrides: list[str], tmp_path) -> tuple[dict, dict]:
    """The consolidated FSDP checkpoint's and DDP's after the same 5 SGD steps."""
    overrides = [*overrides, *FIVE_SGD_STEPS]
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    run_cli("lmdisc.cli.train", [*overrides, "trainer=ddp"], tmp_path, ddp)
    run_cli("lmdisc.cli.train", [*overrides, "trainer=fsdp"], tmp_path, fsdp)
    whole = tmp_path / "fsdp_last.ckpt"
    sharded = fsdp / "checkpoints" / "last.ckpt"
    run_cli("lmdisc.cli.consolidate", [f"ckpt={sharded}", f"out={whole}"], tmp_path, tmp_path / "consolidate")
    ckpt_ddp = torch.load(ddp / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt_ddp, torch.load(whole, weights_only=True)


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("model", list(MODELS))
def test_fsdp_trains_like_ddp_and_its_sharded_checkpoint_consolidates(tiny_corpus, tmp_path, model):
    ckpt_ddp, ckpt_fsdp = _five_steps_under_ddp_and_fsdp(MODELS[model](tiny_corpus), tmp_path)
    fsdp = tmp_path / "fsdp"
    sharded = fsdp / "checkpoints" / "last.ckpt"
    assert sharded.is_dir() and (fsdp / "checkpoints" / "best.ckpt").is_dir()
    assert not list((fsdp / "checkpoints").glob(".*"))  # no partial directory left behind
    assert ckpt_fsdp["global_step"] == ckpt_ddp["global_step"] == 5
    assert _max_difference(ckpt_ddp["state_dict"], ckpt_fsdp["state_dict"]) <= 1e-5
    # the logged gradient norm is the whole model's under FSDP too, not one shard's
    assert _grad_norms(fsdp) == pytest.approx(_grad_norms(tmp_path / "ddp"), rel=1e-4)

    # eval.py reads the consolidated file and the sharded directory alike, with the run's own numbers
    metrics = json.loads((fsdp / "metrics.json").read_text())
    for ckpt in (tmp_path / "fsdp_last.ckpt", sharded):
        again = evaluate(compose_train(tmp_path / "eval", [f"ckpt={ckpt}"], "eval"))
        assert again["test/ppl"] == pytest.approx(metrics["test/ppl"], rel=1e-6)


def test_rkl_disc_fine_tuning_a_pretrained_hf_model_under_fsdp_matches_ddp(
    tiny_corpus, tiny_hf_models, hf_run, tmp_path
):
    """An HF model's decoder layers as units, with rkl_disc's frozen q_0 and discriminator (a full
    copy on each rank, not sharded): the same weights and gradient norms as DDP after 5 steps."""
    overrides = [
        *hf_overrides(tiny_corpus, tiny_hf_models["llama"]),
        "loss=rkl_disc",
        f"init_from={hf_run['lm_ckpt']}",
        f"loss.discriminator_ckpt={hf_run['disc_ckpt']}",
        "evaluate=false",
    ]
    ckpt_ddp, ckpt_fsdp = _five_steps_under_ddp_and_fsdp(overrides, tmp_path)
    assert ckpt_fsdp["global_step"] == ckpt_ddp["global_step"] == 5
    assert _max_difference(ckpt_ddp["state_dict"], ckpt_fsdp["state_dict"]) <= 1e-5
    q_0 = torch.load(hf_run["lm_ckpt"], weights_only=True)["state_dict"]
    assert _max_difference(q_0, ckpt_ddp["state_dict"]) > 0  # the steps moved the weights
    assert _grad_norms(tmp_path / "fsdp") == pytest.approx(_grad_norms(tmp_path / "ddp"), rel=1e-4)


def test_a_model_without_units_to_shard_is_refused_by_name():
    class Opaque(LanguageModelBase):
        pass

    with pytest.raises(LmdiscError, match=r"trainer=fsdp cannot shard Opaque: it names no units"):
        shardable(Opaque())
