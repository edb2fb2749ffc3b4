"""Every option of every config group composes and instantiates; bad options fail clearly."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException
from hydra.utils import instantiate

from helpers import compose_train, quick_overrides
from lmdisc.cli import CONF_DIR
from lmdisc.cli.train import train
from lmdisc.cli.train_disc import train_discriminator
from lmdisc.errors import LmdiscError

GROUPS = ["data", "model", "loss", "optim", "scheduler", "trainer", "callbacks", "logger", "experiment"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def _is_pipeline(group: str, option: str) -> bool:
    """experiment=reproduce_* configures reproduce.py, not train.py (tested below)."""
    return group == "experiment" and "pipeline:" in (Path(CONF_DIR) / group / f"{option}.yaml").read_text()


TRAIN_OPTIONS = [(g, o) for g in GROUPS for o in _options(g) if not _is_pipeline(g, o)]
PIPELINES = [o for o in _options("experiment") if _is_pipeline("experiment", o)]


@pytest.mark.parametrize("group,option", TRAIN_OPTIONS, ids=lambda x: str(x))
def test_every_option_composes(tmp_path, group, option, request):
    overrides = [f"{group}={option}"]
    pretrained = group == "model" and option in ("hf", "smollm2_135m")
    if option == "hf":  # a directory is needed: the tiny Llama built by the tests
        overrides.append(f"model.name_or_path={request.getfixturevalue('tiny_hf_models')['llama']}")
    if group == "data" and option == "text":
        overrides.append(f"data.path={tmp_path}")
    cfg = compose_train(tmp_path, overrides)
    if group == "experiment":
        assert cfg.task_name == option  # experiments are global packages that name their runs
    else:
        assert group in cfg
    if pretrained:  # a pretrained model brings its tokenizer, read from its directory
        assert cfg.data.tokenizer == "hf" and cfg.data.tokenizer_from == cfg.model.name_or_path
    if group == "model" and option != "smollm2_135m":  # (its conversion is tested in test_smollm2.py)
        model = instantiate(cfg.model, vocab_size=30)
        assert sum(p.numel() for p in model.parameters()) > 0
    if group == "loss" and option == "rkl_disc":
        with pytest.raises(InstantiationException, match="init_from"):
            instantiate(cfg.loss)  # fine-tuning needs a trained LM, and says so
    elif group in ("loss", "optim", "logger", "callbacks", "scheduler"):
        instantiate(cfg[group])


@pytest.mark.parametrize("option", _options("precision"))
def test_the_precision_group_sets_the_trainers_precision(tmp_path, option):
    for config_name in ("train", "train_disc"):
        extra = ["lm_ckpt=x.ckpt"] if config_name == "train_disc" else []
        assert (
            compose_train(tmp_path, [*extra, f"precision={option}"], config_name).trainer.precision == option
        )
    # the trainer's own key still works, and wins over the group's default
    assert compose_train(tmp_path, [f"trainer.precision={option}"]).trainer.precision == option
    assert compose_train(tmp_path, []).trainer.precision == "32-true"


@pytest.mark.parametrize("option", PIPELINES)
def test_every_pipeline_experiment_composes(tmp_path, option):
    cfg = compose_train(tmp_path, [f"experiment={option}"], config_name="reproduce")
    # the corpus is named (shared, or the base's: gpt_wt2_to_ptb pre-trains on another one)
    assert any(o.startswith("data=") for o in [*cfg.pipeline.common, *cfg.pipeline.base.overrides])
    finetune = cfg.pipeline.finetune
    for arm in finetune.arms.values():  # a list of overrides, or {overrides, lrs, init_from}
        assert finetune.lrs or (not isinstance(arm, list) and arm.lrs)
    if cfg.pipeline.get("discriminator") is not None:  # the paper's study: its three arms, 3+ seeds
        assert set(finetune.arms) == {"ce", "rkl_disc", "control"}
        assert len(finetune.seeds) >= 3


@pytest.mark.parametrize("option", _options("discriminator"))
def test_every_discriminator_option_composes(tmp_path, option):
    cfg = compose_train(tmp_path, ["lm_ckpt=x.ckpt", f"discriminator={option}"], config_name="train_disc")
    assert cfg.discriminator.encoder == option and cfg.discriminator.negatives == "exact"


def test_train_disc_settings_win_over_the_groups_and_each_encoder_brings_its_rate(tmp_path):
    default = compose_train(tmp_path, ["lm_ckpt=x.ckpt"], config_name="train_disc")
    # not trainer/default.yaml's 40 epochs: train_disc.yaml's own values override the groups
    assert default.trainer.max_epochs == 4 and default.trainer.val_check_interval == 0.25
    assert default.discriminator.encoder == "freq_class" and default.discriminator.train_split == "heldout"
    assert default.optim.optimizer.lr == 0.01
    frozen = compose_train(tmp_path, ["lm_ckpt=x.ckpt", "discriminator=lm_frozen"], config_name="train_disc")
    assert frozen.optim.optimizer.lr == 1e-4 and frozen.discriminator.train_split == "heldout"
    given = ["lm_ckpt=x.ckpt", "discriminator=lm_frozen", "optim.optimizer.lr=3e-4", "trainer.max_epochs=9"]
    chosen = compose_train(tmp_path, given, config_name="train_disc")
    assert chosen.optim.optimizer.lr == 3e-4 and chosen.trainer.max_epochs == 9


def test_multirun_sweep_directory_resolves(tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=loss_ablation"], return_hydra_config=True)
    assert "loss_ablation/multiruns" in cfg.hydra.sweep.dir


def test_eval_config_composes(tmp_path):
    cfg = compose_train(tmp_path, ["ckpt=x.ckpt", "data=ptb"], config_name="eval")
    assert cfg.data.name == "ptb" and cfg.ckpt == "x.ckpt"


def test_zaremba_experiment_matches_the_paper(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=zaremba_small"])
    assert (cfg.data.batch_size, cfg.data.bptt, cfg.trainer.max_epochs) == (20, 20, 13)
    assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.dropout) == (200, 2, 0.0)
    assert cfg.optim.optimizer.lr == 1.0 and cfg.trainer.gradient_clip_val == 5.0
    assert cfg.loss.terms.ce.loss.reduction == "sum_over_time"
    assert cfg.scheduler.scheduler.start_epoch == 4 and cfg.scheduler.scheduler.gamma == 0.5


@pytest.mark.parametrize("override", ["model=transformer_xl", "loss=hinge", "optim=lion"])
def test_unknown_option_is_refused(tmp_path, override):
    with pytest.raises(
        (ConfigCompositionException, MissingConfigException), match=r"(?s)Could not find.*Available options"
    ):
        compose_train(tmp_path, [override])


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.batch_size=0", "data.batch_size"),
        ("data.bptt=-5", "data.bptt"),
        ("optim.optimizer.lr=0", "optim.optimizer.lr"),
        ("optim.optimizer.lr=-1", "optim.optimizer.lr"),
        ("optim.optimizer.lr=true", "optim.optimizer.lr"),
        ("data.batch_size=2.5", "data.batch_size must be a whole number"),
        ("trainer.max_epochs=true", "trainer.max_epochs must be a whole number"),
    ],
)
def test_non_positive_values_are_refused_before_training(tmp_path, tiny_corpus, override, key):
    cfg = compose_train(tmp_path, [*quick_overrides(tiny_corpus), override])
    with pytest.raises(LmdiscError, match=key):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("discriminator.k=2.5", "discriminator.k must be a whole number"),
        ("discriminator.k=0", "discriminator.k must be a whole number"),
        ("discriminator.heldout_fraction=1.5", r"discriminator.heldout_fraction must be in \(0, 1\)"),
        ("discriminator.train_split=valid", "discriminator.train_split must be train or heldout"),
        ("discriminator.negatives=all", "discriminator.negatives must be one of"),
    ],
)
def test_bad_discriminator_options_are_refused_by_their_own_names(tmp_path, override, message):
    cfg = compose_train(tmp_path, ["lm_ckpt=never_read.ckpt", override], config_name="train_disc")
    with pytest.raises(LmdiscError, match=message):
        train_discriminator(cfg)
