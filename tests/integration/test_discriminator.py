"""train_disc.py and loss=rkl_disc end to end on a tiny slice of PTB."""

import csv
import json

import pytest
import torch

from helpers import compose_train, disc_overrides, quick_overrides, rkl_overrides
from lmdisc.callbacks.disc_refresh import retrain_discriminator, training_recipe
from lmdisc.checkpoint import load_checkpoint
from lmdisc.cli.eval import evaluate
from lmdisc.cli.train import train
from lmdisc.cli.train_disc import score_discriminator, train_discriminator
from lmdisc.data.window import Window
from lmdisc.errors import LmdiscError
from lmdisc.losses.reverse_kl import reverse_kl_from_checkpoints

pytestmark = pytest.mark.slow


def test_discriminator_beats_the_zero_head_and_records_its_lm(trained_disc, trained_run):
    metrics = trained_disc
    assert metrics["best_val_disc_bce"] < 2 * torch.log(torch.tensor(2.0)).item()
    ckpt = torch.load(metrics["checkpoint"], weights_only=True)
    assert ckpt["lmdisc"]["kind"] == "discriminator"
    assert ckpt["lmdisc"]["lm"]["sha256"] == metrics["lm_sha256"]
    assert not any(k.startswith("lm.") for k in ckpt["state_dict"])  # the frozen LM is not saved
    for key in ("val/disc_acc", "val/disc_auc", "val/kl_q0_p"):
        assert key in metrics
    # the reported metrics are the saved checkpoint's, not the last epoch's
    assert metrics["val/disc_bce"] == pytest.approx(metrics["best_val_disc_bce"], abs=1e-5)


@pytest.mark.parametrize("encoder", ["lm_copy", "lstm"])
@pytest.mark.parametrize("negatives", ["exact", "sampled"])
def test_train_disc_fast_dev_run(trained_run, tmp_path, encoder, negatives):
    run_dir, _ = trained_run
    overrides = [
        *disc_overrides(run_dir / "checkpoints" / "best.ckpt", encoder),
        f"discriminator.negatives={negatives}",
        "trainer.fast_dev_run=true",
        "discriminator.train_split=heldout",
    ]
    if encoder == "lstm":
        overrides += ["discriminator.lstm.emb_size=16", "discriminator.lstm.hidden_size=16"]
    metrics = train_discriminator(compose_train(tmp_path, overrides, "train_disc"))
    assert metrics["train_split"] == "heldout"


def test_frequency_class_discriminator_trains_scores_and_drives_rkl_disc(trained_run, tiny_corpus, tmp_path):
    lm_ckpt = trained_run[0] / "checkpoints" / "best.ckpt"
    overrides = [
        *disc_overrides(lm_ckpt, "freq_class"),
        "optim.optimizer.lr=0.01",
        "trainer.max_epochs=5",
    ]
    metrics = train_discriminator(compose_train(tmp_path / "disc", overrides, "train_disc"))
    assert metrics["best_val_disc_bce"] < 2 * torch.log(torch.tensor(2.0)).item()
    assert metrics["train_split"] == "heldout"  # freq_class's default
    saved = torch.load(metrics["checkpoint"], weights_only=True)["state_dict"]
    assert set(saved) == {"discriminator.word_class", "discriminator.class_logit"}
    scored = score_discriminator(
        compose_train(
            tmp_path / "score", [*disc_overrides(lm_ckpt), f"disc_ckpt={metrics['checkpoint']}"], "train_disc"
        )
    )
    assert scored["val/disc_bce"] == pytest.approx(metrics["val/disc_bce"], abs=1e-5)
    tuned = [
        *rkl_overrides(tiny_corpus, lm_ckpt, metrics["checkpoint"]),
        "trainer.fast_dev_run=true",
        "logger=none",
    ]
    assert train(compose_train(tmp_path / "tune", tuned))["global_step"] == 1


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("arm", ["ckpt", "none"])
def test_rkl_disc_fine_tuning_runs(trained_run, trained_disc, tiny_corpus, tmp_path, precision, arm):
    run_dir, _ = trained_run
    overrides = [
        *rkl_overrides(tiny_corpus, run_dir / "checkpoints" / "best.ckpt", trained_disc["checkpoint"]),
        f"loss.discriminator={arm}",
        f"trainer.precision={precision}",
        "trainer.fast_dev_run=true",
        "logger=none",
    ]
    metrics = train(compose_train(tmp_path, overrides))
    assert metrics["global_step"] == 1


def test_rkl_disc_short_run_logs_both_terms_and_saves_no_frozen_modules(
    trained_run, trained_disc, tiny_corpus, tmp_path
):
    run_dir, _ = trained_run
    overrides = [
        *rkl_overrides(tiny_corpus, run_dir / "checkpoints" / "best.ckpt", trained_disc["checkpoint"]),
        "trainer.max_epochs=1",
        "optim.optimizer.lr=0.5",
    ]
    metrics = train(compose_train(tmp_path, overrides))
    header = (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/ce", "train/rkl", "train/rkl/kl_q_q0", "train/rkl/mean_s_under_q"} <= set(header)
    assert any(column.startswith("train/rkl/mass_moved/1-") for column in header)
    ckpt = torch.load(metrics["checkpoint"], weights_only=True)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])


def _fine_tune(tiny_corpus, lm_ckpt, disc_ckpt) -> list[str]:
    return [*rkl_overrides(tiny_corpus, lm_ckpt, disc_ckpt), "trainer.fast_dev_run=true"]


def test_discriminator_of_another_lm_is_refused(trained_run, trained_disc, tiny_corpus, tmp_path):
    run_dir, _ = trained_run
    other = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    key = next(k for k in other["state_dict"] if k.endswith("decoder.bias"))
    other["state_dict"][key] = other["state_dict"][key] + 0.01
    torch.save(other, tmp_path / "other_lm.ckpt")
    overrides = _fine_tune(tiny_corpus, tmp_path / "other_lm.ckpt", trained_disc["checkpoint"])
    with pytest.raises(Exception, match="was trained against the LM"):
        train(compose_train(tmp_path, overrides))


def test_discriminator_with_another_tokenizer_is_refused(trained_run, trained_disc, tiny_corpus, tmp_path):
    disc = torch.load(trained_disc["checkpoint"], weights_only=True)
    words = disc["lmdisc"]["tokenizer"]["words"]
    words[0], words[1] = words[1], words[0]
    torch.save(disc, tmp_path / "swapped.ckpt")
    run_dir, _ = trained_run
    overrides = _fine_tune(tiny_corpus, run_dir / "checkpoints" / "best.ckpt", tmp_path / "swapped.ckpt")
    with pytest.raises(Exception, match="another tokenizer"):
        train(compose_train(tmp_path, overrides))


def test_train_disc_refuses_a_discriminator_as_lm(trained_disc, tmp_path):
    cfg = compose_train(tmp_path, disc_overrides(trained_disc["checkpoint"]), "train_disc")
    with pytest.raises(LmdiscError, match="is a discriminator checkpoint"):
        train_discriminator(cfg)


def test_scoring_a_saved_discriminator_reproduces_its_metrics_without_training(
    trained_run, trained_disc, tmp_path
):
    run_dir, _ = trained_run
    # the split is the discriminator's own (heldout), whatever the command line says
    overrides = [
        *disc_overrides(run_dir / "checkpoints" / "best.ckpt"),
        f"disc_ckpt={trained_disc['checkpoint']}",
        "discriminator.train_split=train",
    ]
    scored = score_discriminator(compose_train(tmp_path, overrides, "train_disc"))
    for key in ("val/disc_bce", "val/disc_acc", "val/disc_auc", "val/kl_q0_p"):
        assert scored[key] == pytest.approx(trained_disc[key], abs=1e-5)
    assert scored["scored_only"] and scored["train_split"] == "heldout"
    assert (
        json.loads((tmp_path / "run" / "metrics.json").read_text())["val/disc_bce"] == scored["val/disc_bce"]
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_scoring_refuses_a_discriminator_of_another_lm_or_an_lm_as_discriminator(
    trained_run, trained_disc, tmp_path
):
    lm_path = trained_run[0] / "checkpoints" / "best.ckpt"
    other = torch.load(lm_path, weights_only=True)
    key = next(k for k in other["state_dict"] if k.endswith("decoder.bias"))
    other["state_dict"][key] = other["state_dict"][key] + 0.01
    torch.save(other, tmp_path / "other_lm.ckpt")
    against_other = [*disc_overrides(tmp_path / "other_lm.ckpt"), f"disc_ckpt={trained_disc['checkpoint']}"]
    with pytest.raises(LmdiscError, match="was trained against the LM"):
        score_discriminator(compose_train(tmp_path, against_other, "train_disc"))
    an_lm = [*disc_overrides(lm_path), f"disc_ckpt={lm_path}"]
    with pytest.raises(LmdiscError, match="not a discriminator checkpoint"):
        score_discriminator(compose_train(tmp_path, an_lm, "train_disc"))


def test_refresh_resets_q0_to_the_current_model_and_retrains_the_discriminator(
    trained_run, trained_disc, tiny_corpus, tmp_path
):
    run_dir, _ = trained_run
    overrides = [
        *rkl_overrides(tiny_corpus, run_dir / "checkpoints" / "best.ckpt", trained_disc["checkpoint"]),
        "loss.refresh_every_n_epochs=1",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "optim.optimizer.lr=2",
        "evaluate=false",
    ]
    train(compose_train(tmp_path, overrides))
    with open(tmp_path / "run" / "csv" / "version_0" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    refreshes = [float(r["refresh/disc_bce"]) for r in rows if r.get("refresh/disc_bce")]
    assert len(refreshes) == 1 and refreshes[0] < 2 * torch.log(torch.tensor(2.0)).item()
    kl = [(int(r["epoch"]), float(r["train/rkl/kl_q_q0"])) for r in rows if r.get("train/rkl/kl_q_q0")]
    end_of_first = [v for e, v in kl if e == 0][-1]
    start_of_second = next(v for e, v in kl if e == 1)
    assert end_of_first > 1e-3
    assert start_of_second < 1e-5  # q_0 is now the model itself (lstm_small has no dropout)


def test_a_refresh_retrains_with_the_discriminators_own_optimiser_unless_given_a_rate(
    trained_run, trained_disc
):
    lm_ckpt = trained_run[0] / "checkpoints" / "best.ckpt"
    rkl = reverse_kl_from_checkpoints(str(lm_ckpt), trained_disc["checkpoint"])
    assert rkl.discriminator_run_config["optim"]["optimizer"]["lr"] == 0.001  # as trained_disc was
    # as if it had been trained with plain SGD at rate 0: re-training it must then change nothing
    rkl.discriminator_run_config["optim"]["optimizer"] = {
        "_target_": "torch.optim.SGD",
        "_partial_": True,
        "lr": 0.0,
    }
    vocab = len(load_checkpoint(lm_ckpt)["lmdisc"]["tokenizer"]["words"])
    generator = torch.Generator().manual_seed(0)

    def window() -> Window:
        ids = torch.randint(vocab, (4, 10), generator=generator)
        return Window(ids, ids, torch.ones(4, 10), torch.zeros(4, 10, dtype=torch.long))

    batches = [window() for _ in range(3)]
    before = {k: v.clone() for k, v in rkl.discriminator.state_dict().items()}

    def changed() -> bool:
        return any(not torch.equal(before[k], v) for k, v in rkl.discriminator.state_dict().items())

    cpu = torch.device("cpu")
    retrain_discriminator(rkl, batches, 1, cpu, training_recipe(rkl.discriminator_run_config))
    assert not changed()
    retrain_discriminator(rkl, batches, 1, cpu, training_recipe(rkl.discriminator_run_config, lr=0.5))
    assert changed()


def test_a_discriminator_checkpoint_where_an_lm_is_needed_is_refused_by_name(
    trained_disc, tiny_corpus, tmp_path
):
    disc = trained_disc["checkpoint"]
    refused = pytest.raises(LmdiscError, match="is a discriminator checkpoint")
    with refused:
        train(compose_train(tmp_path, [*quick_overrides(tiny_corpus), f"init_from={disc}"]))
    with refused:
        evaluate(compose_train(tmp_path, [f"ckpt={disc}", "data=text", f"data.path={tiny_corpus}"], "eval"))
    with refused:
        train_discriminator(compose_train(tmp_path, disc_overrides(disc), "train_disc"))
