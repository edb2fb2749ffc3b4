"""finetune.mode end to end through train.py: checkpoints, resume, export, and every objective."""

from __future__ import annotations

import pytest
import torch

from helpers import compose_train, gpt_overrides, hf_overrides
from lmdisc.checkpoint import build_model, load_checkpoint
from lmdisc.cli.train import train
from lmdisc.export import export_checkpoint
from lmdisc.models.hf import HFCausalLM

pytestmark = pytest.mark.slow


def _run(tmp_path, overrides):
    metrics = train(compose_train(tmp_path, overrides))
    return metrics, tmp_path / "run" / "checkpoints"


def test_lora_checkpoint_holds_adapters_alone_and_rebuilds_merged(tmp_path, tiny_corpus, tiny_hf_models):
    overrides = [
        *hf_overrides(tiny_corpus, tiny_hf_models["llama"]),
        "finetune.mode=lora",
        "finetune.lora.r=2",
        "finetune.lora.target_modules=[q_proj,v_proj]",
        "trainer.max_steps=3",
        "trainer.max_epochs=1",
        "optim.optimizer.lr=0.05",
    ]
    metrics, ckpts = _run(tmp_path, overrides)
    # 2 layers x (q: 32 -> 32, v: 32 -> 16 with 2 kv heads of 8) x r=2
    assert metrics["trainable_parameters"] == 2 * 2 * ((32 + 32) + (32 + 16))
    assert metrics["finetune_mode"] == "lora"
    ckpt = load_checkpoint(ckpts / "last.ckpt")
    keys = list(ckpt["state_dict"])
    assert keys and all("lora_" in k for k in keys)
    model = build_model(ckpt).eval()
    assert not any("lora_" in n for n, _ in model.named_parameters())
    # the merged model differs from the base: the adapters were trained and merged
    base = HFCausalLM(vocab_size=model.vocab_size, name_or_path=str(tiny_hf_models["llama"])).eval()
    tokens = torch.randint(0, 100, (1, 16))
    assert not torch.allclose(model(tokens)[0], base(tokens)[0])
    # resuming loads the adapters into the base
    resumed, _ = _run(
        tmp_path / "resume",
        [*overrides, "trainer.max_steps=5", "trainer.max_epochs=3", f"ckpt_path={ckpts / 'last.ckpt'}"],
    )
    assert resumed["global_step"] == 5
    # export merges them: transformers gives our logits
    out = export_checkpoint(ckpt, tmp_path / "export")
    assert out["max_abs_logit_difference"] <= 1e-5


@pytest.mark.parametrize("mode", ["head", "last_n"])
def test_untied_head_checkpoint_rebuilds(tmp_path, gpt_run, tiny_corpus, mode):
    overrides = [
        *gpt_overrides(tiny_corpus),
        f"init_from={gpt_run['lm_ckpt']}",
        f"finetune.mode={mode}",
        "finetune.n=1",
        "trainer.max_steps=2",
        "trainer.max_epochs=1",
    ]
    metrics, ckpts = _run(tmp_path, overrides)
    ckpt = load_checkpoint(ckpts / "last.ckpt")
    model = build_model(ckpt)
    assert model.lm_head is not None
    assert metrics["trainable_parameters"] < metrics["parameters"]
    assert "test/word_ppl" in metrics
    export_checkpoint(ckpt, tmp_path / "export")  # GPT-2 with an untied head gives our logits
    # a run that starts from it (fully) keeps the head untied, and its checkpoint rebuilds
    again = [
        *gpt_overrides(tiny_corpus),
        f"init_from={ckpts / 'last.ckpt'}",
        "trainer.max_steps=1",
        "trainer.max_epochs=1",
    ]
    _, ckpts2 = _run(tmp_path / "again", again)
    assert build_model(load_checkpoint(ckpts2 / "last.ckpt")).lm_head is not None


LOSSES = {
    "ce": ["loss=ce"],
    "ppl_reg": ["loss=ppl_reg"],
    "ppl": ["loss=ppl"],
    "rkl_disc": ["loss=rkl_disc", "loss.discriminator_ckpt={disc}"],
    "control": ["loss=rkl_disc", "loss.discriminator=none"],
}
MODES = ["full", "head", "last_n", "lora"]


def _objective_run(tmp_path, base_overrides, run, loss, mode):
    overrides = [
        *base_overrides,
        f"init_from={run['lm_ckpt']}",
        *(o.format(disc=run["disc_ckpt"]) for o in LOSSES[loss]),
        f"finetune.mode={mode}",
        "finetune.n=1",
        "finetune.lora.r=2",
        "trainer.fast_dev_run=true",
    ]
    metrics = train(compose_train(tmp_path, overrides))
    assert metrics["global_step"] == 1
    assert 0 < metrics["trainable_parameters"] <= metrics["parameters"]
    assert (metrics["trainable_parameters"] == metrics["parameters"]) == (mode == "full")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loss", list(LOSSES))
def test_every_objective_in_every_mode_on_gpt(tmp_path, tiny_corpus, gpt_run, loss, mode):
    _objective_run(tmp_path, gpt_overrides(tiny_corpus), gpt_run, loss, mode)


@pytest.mark.parametrize(
    ("loss", "mode"),
    [*(("rkl_disc", m) for m in MODES), *((loss, "lora") for loss in LOSSES if loss != "rkl_disc")],
)
def test_objectives_and_modes_on_a_transformers_llama(
    tmp_path, tiny_corpus, tiny_hf_models, hf_run, loss, mode
):
    _objective_run(tmp_path, hf_overrides(tiny_corpus, tiny_hf_models["llama"]), hf_run, loss, mode)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["finetune.mode=last_n", "finetune.n=3"],
            r"finetune.n must be a whole number in 1..2 \(the model's depth\)",
        ),
        (
            ["finetune.mode=lora", "finetune.lora.target_modules=[c_attn]"],
            r"target_modules names \['c_attn'\], which HFCausalLM does not have; its Linear modules are \['down_proj'",
        ),
        (["optim.layer_decay=0"], r"optim.layer_decay must be a number in \(0, 1\]"),
        (["optim.layer_decay=1.2"], r"optim.layer_decay must be a number in \(0, 1\]"),
        (
            ["scheduler=warmup_linear", "scheduler.scheduler.warmup_steps=50", "trainer.max_steps=10"],
            r"warmup_steps=50 is not shorter than the run \(10 optimiser steps\)",
        ),
        (["model.dropout=1.5"], r"model.dropout must be in \[0, 1\)"),
    ],
)
def test_bad_finetune_options_are_refused(tmp_path, tiny_corpus, tiny_hf_models, overrides, message):
    from lmdisc.errors import LmdiscError

    with pytest.raises(LmdiscError, match=message):
        train(compose_train(tmp_path, [*hf_overrides(tiny_corpus, tiny_hf_models["llama"]), *overrides]))


def test_hf_dropout_override_reaches_the_model(tmp_path, tiny_hf_models):
    model = HFCausalLM(vocab_size=10, name_or_path=str(tiny_hf_models["gpt2"]), dropout=0.3)
    assert model.hf.config.resid_pdrop == model.hf.config.embd_pdrop == model.hf.config.attn_pdrop == 0.3
    assert {m.p for m in model.hf.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}


def test_untied_head_of_a_transformers_model_rebuilds_from_its_checkpoint(
    tmp_path, tiny_corpus, tiny_hf_models
):
    overrides = [
        *hf_overrides(tiny_corpus, tiny_hf_models["llama"]),
        "finetune.mode=head",
        "trainer.max_steps=2",
        "trainer.max_epochs=1",
        "optim.optimizer.lr=0.05",
    ]
    metrics, ckpts = _run(tmp_path, overrides)
    model = build_model(load_checkpoint(ckpts / "last.ckpt")).eval()
    head, embedding = model.hf.get_output_embeddings().weight, model.hf.get_input_embeddings().weight
    assert head is not embedding and not torch.equal(head, embedding)  # the head trained alone
    base = HFCausalLM(vocab_size=model.vocab_size, name_or_path=str(tiny_hf_models["llama"]))
    assert torch.equal(embedding, base.hf.get_input_embeddings().weight)
    # 32 x vocabulary output layer + the final RMSNorm's 32
    assert metrics["trainable_parameters"] == head.numel() + 32


@pytest.mark.parametrize("encoder", ["freq_class", "lm_frozen"])
def test_the_paper_pipeline_on_a_lora_base(tmp_path, tiny_corpus, tiny_hf_models, encoder):
    """q_0 fine-tuned with LoRA (adapters-only checkpoint) -> a discriminator of it -> rkl_disc
    from it with fresh adapters: the study's chain, on a tiny Llama."""
    from helpers import disc_overrides
    from lmdisc.cli.train_disc import train_discriminator

    hf = hf_overrides(tiny_corpus, tiny_hf_models["llama"])
    _, ckpts = _run(
        tmp_path / "base", [*hf, "finetune.mode=lora", "trainer.max_steps=2", "trainer.max_epochs=1"]
    )
    base = ckpts / "last.ckpt"
    disc = train_discriminator(
        compose_train(
            tmp_path / "disc",
            [*disc_overrides(base, encoder), "trainer.max_epochs=1", "trainer.limit_train_batches=2"],
            "train_disc",
        )
    )
    overrides = [
        *hf,
        f"init_from={base}",
        "loss=rkl_disc",
        f"loss.discriminator_ckpt={disc['checkpoint']}",
        "finetune.mode=lora",
        "trainer.fast_dev_run=true",
    ]
    assert train(compose_train(tmp_path / "rkl", overrides))["global_step"] == 1
