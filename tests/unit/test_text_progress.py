"""The progress lines written when stdout is a file: when they come and what they say."""

import io
import re

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from torch.utils.data import DataLoader, TensorDataset

from helpers import compose_train
from lmdisc.callbacks.text_progress import TextProgressBar, progress_bar

BATCHES, EPOCHS, BATCH_SHAPE = 6, 2, (4, 5)


class _Toy(L.LightningModule):
    """A linear map trained on fixed (inputs, targets) batches, logging like LanguageModel."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(BATCH_SHAPE[1], 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0].float()).pow(2).mean()
        self.log("train/objective", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/ppl", 7.0, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(bar: TextProgressBar, capsys) -> list[str]:
    rows = torch.ones(BATCHES * BATCH_SHAPE[0], BATCH_SHAPE[1])
    batches = DataLoader(TensorDataset(rows, rows), batch_size=BATCH_SHAPE[0])
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(_Toy(), batches, batches)
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]


def test_every_batch_reports_its_position_speed_and_metrics_when_every_s_is_zero(capsys):
    lines = _fit(TextProgressBar(every_s=0), capsys)
    batch_lines = [line for line in lines if ": batch " in line]
    assert len(batch_lines) == BATCHES * EPOCHS
    assert batch_lines[0].startswith(f"epoch 1/{EPOCHS}: batch 1/{BATCHES} (16.7%)")
    assert batch_lines[-1].startswith(f"epoch {EPOCHS}/{EPOCHS}: batch {BATCHES}/{BATCHES} (100.0%)")
    assert all(re.search(r"[\d,]+ tok/s", line) and "train/objective" in line for line in batch_lines)
    assert f"epoch {EPOCHS}/{EPOCHS}: validation · val/ppl 7" in lines


def test_a_long_interval_leaves_only_validation_and_epoch_lines(capsys):
    lines = _fit(TextProgressBar(every_s=3600), capsys)
    assert not [line for line in lines if ": batch " in line]
    assert sum(": validation" in line for line in lines) == EPOCHS
    assert sum(": finished in " in line for line in lines) == EPOCHS


def test_a_validation_outside_fit_is_not_labelled_with_an_epoch(capsys):
    bar = TextProgressBar(every_s=3600)
    rows = torch.ones(BATCHES * BATCH_SHAPE[0], BATCH_SHAPE[1])
    trainer = L.Trainer(callbacks=[bar], logger=False, enable_model_summary=False, accelerator="cpu")
    trainer.validate(_Toy(), DataLoader(TensorDataset(rows, rows), batch_size=BATCH_SHAPE[0]), verbose=False)
    assert capsys.readouterr().out.splitlines()[-1] == "validation · val/ppl 7"


def test_a_disabled_bar_prints_nothing(capsys):
    bar = TextProgressBar(every_s=0)
    bar.disable()
    assert _fit(bar, capsys) == []


@pytest.mark.parametrize("every_s", [-1.0, float("nan"), float("inf")])
def test_a_bad_interval_is_refused(every_s):
    with pytest.raises(ValueError, match="every_s"):
        TextProgressBar(every_s=every_s)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_bar_is_kept_for_a_terminal_and_replaced_for_a_file(monkeypatch):
    monkeypatch.setattr("sys.stdout", _Terminal())
    assert isinstance(progress_bar(), RichProgressBar)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert isinstance(progress_bar(every_s=5), TextProgressBar)


@pytest.mark.parametrize("config_name", ["train", "train_disc"])
def test_the_entry_points_use_the_automatic_bar(tmp_path, monkeypatch, config_name):
    cfg = compose_train(tmp_path, [], config_name)
    monkeypatch.setattr("sys.stdout", io.StringIO())
    bar = instantiate(cfg.callbacks.progress_bar)
    assert isinstance(bar, TextProgressBar) and bar.every_s == 60


class _SaveAt(L.Callback):
    """Saves a mid-epoch checkpoint after half the batches, as a preemption would."""

    def __init__(self, folder):
        self.folder = folder

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx + 1 == BATCHES // 2:
            trainer.save_checkpoint(self.folder / "mid.ckpt", weights_only=False)


def test_a_run_resumed_mid_epoch_counts_time_and_speed_from_its_own_start(tmp_path, capsys):
    """Lightning calls no epoch start when it resumes mid-epoch: the bar once reported the machine's
    uptime as the elapsed time, 0 tok/s and an ETA from it."""
    rows = torch.ones(BATCHES * BATCH_SHAPE[0], BATCH_SHAPE[1])
    batches = DataLoader(TensorDataset(rows, rows), batch_size=BATCH_SHAPE[0])
    common = dict(logger=False, enable_checkpointing=False, enable_model_summary=False, accelerator="cpu")
    first = L.Trainer(max_epochs=1, callbacks=[TextProgressBar(every_s=3600), _SaveAt(tmp_path)], **common)
    first.fit(_Toy(), batches)
    capsys.readouterr()
    resumed = L.Trainer(max_epochs=1, callbacks=[TextProgressBar(every_s=0)], **common)
    resumed.fit(_Toy(), batches, ckpt_path=tmp_path / "mid.ckpt", weights_only=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if ": batch " in line]
    assert lines, "the resumed epoch printed no batch line"
    for line in lines:
        elapsed = re.search(r"· (\S+) elapsed", line).group(1)
        assert elapsed.count(":") == 1 and int(elapsed.split(":")[0]) < 5, line
        assert int(re.search(r"([\d,]+) tok/s", line).group(1).replace(",", "")) > 0, line
