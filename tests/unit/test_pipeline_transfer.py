"""The generalised pipeline's plan, from the real experiment configs: a pretrained base, per-arm
learning rates, arms with and without init_from, {base_dir}, named slices, several discriminator
candidates, extra evaluations; the checks that refuse a bad plan; best-lr selection; the paired
bootstrap on known answers; slices and the tokenizer's identity. Nothing trains here."""

import json
import math
import sys

import numpy as np
import pytest
from hydra import compose
from omegaconf import OmegaConf

from helpers import compose_train
from lmdisc.cli import CONF_DIR
from lmdisc.errors import LmdiscError
from lmdisc.reproduce import Pipeline
from lmdisc.reproduce.bootstrap import paired_arrays, paired_bootstrap
from lmdisc.reproduce.identity import CONFIG_NAMES, fresh_global_hydra, resolved_identity
from lmdisc.reproduce.selection import best_by_validation
from lmdisc.reproduce.slices import check_slices, write_slices
from lmdisc.reproduce.spec import arms_of, evals_of
from lmdisc.reproduce.stages import _call

NEW_EXPERIMENTS = (
    "smollm2_wt2_transfer",
    "gpt_wt2_to_ptb",
    "reproduce_smollm2_ptb",
    "smollm2_ppl_reg",
    "reproduce_smollm2_wt2",
)


def _plan(tmp_path, experiment: str, overrides=()) -> Pipeline:
    """The pipeline reproduce.py would build from the experiment (its Hydra settings included)."""
    cfg = compose_train(
        tmp_path, [f"experiment={experiment}", *overrides], "reproduce", return_hydra_config=True
    )
    pipeline_cfg = OmegaConf.to_container(cfg.pipeline, resolve=True)
    pipeline_cfg["device"] = []
    return Pipeline(pipeline_cfg, tmp_path / "run", [f"paths.data_dir={cfg.paths.data_dir}"])


def _every_kind_of_stage(plan: Pipeline) -> list:
    """The base (trained or not), its evaluation, the discriminators, one run per arm and every
    extra evaluation, with placeholder checkpoints (composing reads no file)."""
    base_ckpt = None if plan.pretrained_base else "/b/best.ckpt"
    runs = plan.finetune_stages(base_ckpt, "/d/best.ckpt", "/b")
    first = list({s.meta["arm"]: s for s in reversed(runs)}.values())
    stages = [s for s in (plan.base_stage(), plan.base_eval_stage(base_ckpt)) if s is not None]
    stages += plan.disc_stages(base_ckpt) if plan.disc_cfg else []
    stages += first + [plan.eval_stage(spec, first[0].name, "/r/best.ckpt") for spec in plan.evals]
    return stages + [plan.eval_stage(spec, "base", base_ckpt) for spec in plan.evals if spec.base]


# reproduce_smollm2_wt2's stages are reproduce_smollm2_ptb's on another corpus (tested below)
@pytest.mark.parametrize("experiment", NEW_EXPERIMENTS[:4])
def test_each_new_experiment_composes_with_reproduce_and_every_stage_with_its_entry_point(
    tmp_path, experiment
):
    plan = _plan(tmp_path, experiment)
    stages = plan.finetune_stages(None if plan.pretrained_base else "/b/best.ckpt", "/d/best.ckpt", "/b")
    assert stages and len({s.name for s in stages}) == len(stages)
    for stage in _every_kind_of_stage(plan):
        assert not any(
            p in " ".join(stage.overrides) for p in ("{base_dir}", "{disc_ckpt}", "{slice:", "{base_ckpt}")
        )
        with fresh_global_hydra(CONF_DIR):  # an unknown key or group option is refused here
            cfg = compose(CONFIG_NAMES[stage.entry], overrides=[*stage.overrides, *stage.where])
        data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else {}
        if "slices" in str(stage.overrides):
            assert (
                data["path"]
                == f"{tmp_path / 'run' / 'slices'}/{'disc' if stage.entry == 'train_disc' else 'select'}"
            )
        if cfg.get("score_file"):
            assert cfg.score_file == f"{data['path']}/test.txt"


def test_ppl_reg_plans_every_alpha_and_ce_under_each_optimiser_and_more_seeds_only_where_asked(tmp_path):
    step2 = [
        "pipeline.finetune.arms.sgd_ce.seeds=[1,2,3]",
        "pipeline.finetune.arms.sgd_alpha1e-2.seeds=[1,2,3]",
    ]
    plan = _plan(tmp_path, "smollm2_ppl_reg", step2)
    assert plan.pretrained_base and plan.disc_cfg is None
    stages = plan.finetune_stages(None, None)
    assert len(stages) == 8 + 4 and all("init_from" not in " ".join(s.overrides) for s in stages)
    by_name = {s.name: s.overrides for s in stages}
    assert {"optim=sgd", "loss=ppl_reg", "loss.alpha=1.0e-2", "optim.optimizer.lr=0.5", "seed=3"} <= set(
        by_name["sgd_alpha1e-2_lr0.5_seed3"]
    )
    assert {"optim=adamw", "loss=ce", "finetune.mode=lora", "trainer.log_every_n_steps=1"} <= set(
        by_name["adamw_ce_lr0.0002_seed1"]
    )
    assert "adamw_ce_lr0.0002_seed2" not in by_name
    with pytest.raises(LmdiscError, match=r"pipeline.paired: \['sgd_ce', 'sgd_typo'\] must name two arms"):
        _plan(tmp_path, "smollm2_ppl_reg", ["pipeline.paired=[[sgd_ce,sgd_typo]]"])


def test_transfer_zero_shot_base_and_per_arm_rates_with_no_init_from(tmp_path):
    plan = _plan(tmp_path, "smollm2_wt2_transfer")
    assert plan.base_stage() is None and plan.base_checkpoint() is None and plan.disc_cfg is None
    base_eval = plan.base_eval_stage(None)
    assert base_eval.entry == "eval" and "model=smollm2_135m" in base_eval.overrides
    assert {"data=wikitext2", "precision=bf16-mixed", "data.eval_stride=1024"} <= set(base_eval.overrides)
    assert not any(o.startswith(("ckpt=", "trainer.", "finetune.")) for o in base_eval.overrides)
    stages = plan.finetune_stages(None, None)
    assert [s.name for s in stages] == [
        "head_lr0.0003_seed1",
        "last_n_lr0.0001_seed1",
        "lora_lr0.001_seed1",
        "full_lr3e-05_seed1",
    ]
    for stage in stages:
        assert not any(o.startswith("init_from=") for o in stage.overrides)
        assert (
            f"optim.optimizer.lr={stage.meta['lr']}" in stage.overrides
            and "evaluate=false" in stage.overrides
        )
    assert "finetune.mode=lora" in stages[2].overrides and "finetune.n=2" in stages[1].overrides
    # the token budget the comment states: epochs x steps x batch x block
    assert {
        "trainer.max_epochs=4",
        "trainer.limit_train_batches=16",
        "data.batch_size=2",
        "data.block_size=512",
    } <= set(stages[0].overrides)
    wt2, ptb = plan.evals
    assert (wt2.name, wt2.runs, wt2.base, ptb.name, ptb.base) == ("wt2", "all", False, "ptb", True)
    run_eval = plan.eval_stage(ptb, stages[2].name, "/r/checkpoints/best.ckpt")
    assert run_eval.overrides[-1] == "ckpt=/r/checkpoints/best.ckpt" and "splits=[test]" in run_eval.overrides
    assert run_eval.out_dir == tmp_path / "run" / "evals" / "ptb" / "lora_lr0.001_seed1"
    assert any(w.startswith("metrics_file=") for w in run_eval.where)
    zero_shot = plan.eval_stage(ptb, "base", None)
    assert "model=smollm2_135m" in zero_shot.overrides and not any(
        o.startswith("ckpt=") for o in zero_shot.overrides
    )


def test_gpt_transfer_arms_start_from_the_base_or_from_scratch_with_its_tokenizer(tmp_path):
    plan = _plan(tmp_path, "gpt_wt2_to_ptb")
    base = plan.base_stage()
    assert base is not None and "data=wikitext2" in base.overrides and "data.tokenizer=bpe" in base.overrides
    assert plan.base_eval_stage("/b.ckpt").overrides[-2:] == ["ckpt=/b.ckpt", "data=ptb"]
    stages = {s.meta["arm"]: s for s in plan.finetune_stages("/b/best.ckpt", None, "/pipe/base")}
    finetuned, scratch = stages["finetuned"], stages["scratch"]
    assert "init_from=/b/best.ckpt" in finetuned.overrides and not any(
        "init_from" in o for o in scratch.overrides
    )
    for stage in (finetuned, scratch):
        assert "data.tokenizer_from=/pipe/base" in stage.overrides and "data=ptb" in stage.overrides
        assert "trainer.max_steps=1500" in stage.overrides and "model=gpt" in stage.overrides
    assert [
        s.meta["lr"] for s in plan.finetune_stages("/b.ckpt", None, "/b") if s.meta["arm"] == "finetuned"
    ] == [1e-4, 3e-4]


def test_the_study_reads_named_slices_trains_discriminator_candidates_and_scores_the_full_test(tmp_path):
    plan = _plan(tmp_path, "reproduce_smollm2_ptb")
    assert f"++paths.slices={tmp_path / 'run' / 'slices'}" in plan.shared
    base = plan.base_stage()
    assert (
        "data.path=${paths.slices}/select" in base.overrides and "callbacks=early_stopping" in base.overrides
    )
    discs = plan.disc_stages("/q0.ckpt")
    assert [d.name for d in discs] == ["discriminator_freq_class", "discriminator_lm_frozen"]
    for disc in discs:
        assert "data.path=${paths.slices}/disc" in disc.overrides and "lm_ckpt=/q0.ckpt" in disc.overrides
        assert not any(o.startswith(("finetune.", "model=")) for o in disc.overrides)
    stages = plan.finetune_stages("/q0.ckpt", "/d.ckpt")
    assert len(stages) == 3 * 2 * 3
    rkl = next(s for s in stages if s.meta["arm"] == "rkl_disc")
    assert "loss.discriminator_ckpt=/d.ckpt" in rkl.overrides and "init_from=/q0.ckpt" in rkl.overrides
    assert all("finetune.mode=last_n" in s.overrides for s in stages)  # the same trainable parameters
    # no discriminator beat the zero head: the arm that needs one is left out
    assert {s.meta["arm"] for s in plan.finetune_stages("/q0.ckpt", None)} == {"ce", "control"}
    (full,) = plan.evals
    assert (full.runs, full.base, full.score, full.done_file) == (
        "best",
        True,
        "test",
        "test.scores.summary.json",
    )
    scoring = plan.eval_stage(full, "ce_lr1e-05_seed1", "/r.ckpt")
    assert "score_file=${data.path}/test.txt" in scoring.overrides and "data=ptb" in scoring.overrides
    out = tmp_path / "run" / "evals" / "test_full" / "ce_lr1e-05_seed1"
    assert f"score_out={out / 'test.scores.jsonl'}" in scoring.where
    assert scoring.metrics_file == out / "test.scores.summary.json"


def test_the_wikitext2_study_is_the_ptb_one_on_another_corpus(tmp_path):
    ptb, wt2 = _plan(tmp_path, "reproduce_smollm2_ptb"), _plan(tmp_path, "reproduce_smollm2_wt2")
    assert wt2.slices["select"]["from"].endswith("wikitext-2") and wt2.slices["disc"]["valid"] == (200, 800)
    ptb_runs, wt2_runs = ptb.finetune_stages("/q", "/d"), wt2.finetune_stages("/q", "/d")
    assert [s.name for s in ptb_runs] == [s.name for s in wt2_runs]
    swap = {"data=ptb": "data=wikitext2"}
    assert [[swap.get(o, o) for o in s.overrides] for s in ptb_runs] == [s.overrides for s in wt2_runs]
    assert "data=wikitext2" in wt2.evals[0].overrides


@pytest.mark.parametrize(
    ("finetune", "message"),
    [
        ({"arms": {"a": {"overrides": [], "lrs": [0.1], "init": "base"}}}, r"unknown keys \['init'\]"),
        (
            {"arms": {"a": {"overrides": [], "lrs": [0.1], "init_from": "q0"}}},
            "init_from must be base or none",
        ),
        ({"arms": {"a": {"overrides": [], "lrs": [0.1, -1.0]}}}, r"arms\.a\.lrs must be positive numbers"),
        ({"arms": {"a": {"overrides": "loss=ce", "lrs": [0.1]}}}, "must be a list of overrides"),
        ({"arms": {"a": {"overrides": []}}, "lrs": []}, "at least one arm, lr and seed"),
        (
            {"extra_evals": {"t": {"overrides": ["splits=[test]"], "score": "test"}}},
            "name it in its overrides",
        ),
        ({"extra_evals": {"t": {"overrides": ["data=ptb"], "runs": "some"}}}, r"runs must be one of"),
        (
            {"extra_evals": {"t": {"overrides": ["data=ptb"], "score": "train"}}},
            r"score must be null or one of",
        ),
        (
            {"extra_evals": {"t": {"overrides": ["data=ptb"], "runs": "best"}}, "score_with": "t"},
            "score_with='t'",
        ),
    ],
)
def test_a_bad_arm_or_evaluation_is_refused(finetune, message):
    spec = {"arms": {"ce": ["loss=ce"]}, "lrs": [0.1], "seeds": [1], **finetune}
    with pytest.raises(LmdiscError, match=message):
        arms_of(spec)
        evals_of(spec)


def test_per_arm_rates_and_starts_are_read_from_either_form():
    arms = arms_of(
        {
            "arms": {
                "ce": ["loss=ce"],
                "scratch": {"overrides": ["x=1"], "lrs": [1e-3, 2e-3], "init_from": None},
                "more": {"overrides": ["y=2"], "seeds": [1, 2, 3]},
            },
            "lrs": [0.1],
            "seeds": [1],
        }
    )
    assert [(a.name, a.overrides, a.lrs, a.seeds, a.init) for a in arms] == [
        ("ce", ("loss=ce",), (0.1,), (1,), None),
        ("scratch", ("x=1",), (1e-3, 2e-3), (1,), "none"),
        ("more", ("y=2",), (0.1,), (1, 2, 3), None),
    ]


@pytest.mark.parametrize(
    ("seeds", "message"),
    [([1, 1], r"arms.ce.seeds has a repeated value"), ([1.5], r"arms.ce.seeds must be integers")],
)
def test_an_arms_own_bad_seeds_are_refused(seeds, message):
    with pytest.raises(LmdiscError, match=message):
        arms_of({"arms": {"ce": {"overrides": [], "seeds": seeds}}, "lrs": [0.1], "seeds": [1]})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+pipeline.finetune.arms.head.init_from=base", "no base checkpoint to start from"),
        (
            "pipeline.discriminator={overrides:[]}",
            "with pipeline.base.pretrained, set pipeline.discriminator: null",
        ),
        (
            'pipeline.finetune.arms.head.overrides=["loss.discriminator_ckpt={disc_ckpt}"]',
            r"names \{disc_ckpt\}",
        ),
        ("pipeline.base.ckpt=/x.ckpt", "not both"),
    ],
)
def test_a_plan_that_needs_a_missing_checkpoint_is_refused_before_anything_runs(tmp_path, override, message):
    with pytest.raises(LmdiscError, match=message):
        _plan(tmp_path, "smollm2_wt2_transfer", [override])


def test_a_bad_slice_is_refused(tmp_path):
    with pytest.raises(LmdiscError, match=r"valid must be a line range"):
        check_slices({"s": {"from": "/c", "valid": [5, 5], "test": [0, 1]}})
    with pytest.raises(LmdiscError, match="names slice 'nope'"):
        _plan(tmp_path, "reproduce_smollm2_ptb", ['pipeline.common=["data.path={slice:nope}"]'])


def test_each_arms_best_rate_is_chosen_by_mean_validation_over_seeds():
    runs = [
        {"arm": "ce", "lr": 0.1, "seed": 1, "val/ppl": 10.0},
        {"arm": "ce", "lr": 0.1, "seed": 2, "val/ppl": 14.0},  # mean 12
        {"arm": "ce", "lr": 0.3, "seed": 1, "val/ppl": 11.0},
        {"arm": "ce", "lr": 0.3, "seed": 2, "val/ppl": 12.0},  # mean 11.5: best, though 0.1 has the best run
        {"arm": "rkl", "lr": 0.3, "seed": 1, "val/ppl": 9.0},
        {"arm": "rkl", "lr": 0.1, "seed": 1, "val/ppl": 9.0},  # a tie: the smaller rate
    ]
    best = best_by_validation(runs)
    assert best["ce"]["lr"] == 0.3 and [r["seed"] for r in best["ce"]["runs"]] == [1, 2]
    assert best["rkl"]["lr"] == 0.1 and set(best["ce"]["grid"]) == {0.1, 0.3}


def _lines_file(path, nll_nats, words):
    rows = [
        {
            "line": i,
            "words": int(w),
            "mean_surprisal_bits": n / w / math.log(2),
            "ppl": 2 ** (n / w / math.log(2)),
        }
        for i, (n, w) in enumerate(zip(nll_nats, words))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_paired_bootstrap_gives_zero_for_identical_runs_and_the_shift_for_a_constant_shift(tmp_path):
    rng = np.random.default_rng(0)
    words = rng.integers(5, 40, size=300).astype(float)
    b = rng.gamma(4.0, 1.2, size=(3, 300)) * words  # three seeds, per-line NLL in nats
    same = paired_bootstrap(b, b.copy(), words, resamples=400)
    assert same["delta_nll_per_word"] == 0.0 and same["nll_interval"] == [0.0, 0.0]
    assert same["delta_word_ppl"] == 0.0 and same["ppl_interval"] == [0.0, 0.0]
    shifted = paired_bootstrap(b - 0.05 * words, b, words, resamples=400)  # 0.05 nats a word lower
    assert shifted["delta_nll_per_word"] == pytest.approx(-0.05, abs=1e-12)
    assert shifted["nll_interval"] == pytest.approx([-0.05, -0.05], abs=1e-12)
    assert shifted["ppl_interval"][1] < 0
    # noise that differs line by line widens the interval around the point estimate
    noisy = paired_bootstrap(b + rng.normal(0, 2.0, size=b.shape) * np.sqrt(words), b, words, resamples=400)
    low, high = noisy["nll_interval"]
    assert low < noisy["delta_nll_per_word"] < high and high - low > 1e-3
    # the same numbers read back from eval.py's per-line files
    files = [
        (
            _lines_file(tmp_path / f"a{s}.jsonl", b[s] - 0.05 * words, words),
            _lines_file(tmp_path / f"b{s}.jsonl", b[s], words),
        )
        for s in range(3)
    ]
    a_back, b_back, w_back = paired_arrays(files)
    assert np.allclose(a_back, b - 0.05 * words) and np.array_equal(w_back, words)
    assert paired_bootstrap(a_back, b_back, w_back, resamples=200)["nll_interval"] == pytest.approx(
        [-0.05, -0.05], abs=1e-9
    )
    _lines_file(tmp_path / "short.jsonl", b[0][:-1], words[:-1])
    with pytest.raises(LmdiscError, match="does not score the same lines"):
        paired_arrays([(files[0][0], tmp_path / "short.jsonl")])


def test_slices_are_fixed_line_ranges_written_once_beside_the_whole_training_text(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, n in (("train", 5), ("valid", 10), ("test", 10)):
        (corpus / f"{split}.txt").write_text("".join(f"{split} line {i}\n" for i in range(n)))
    spec = check_slices({"sel": {"from": str(corpus), "valid": [2, 5], "test": [0, 3]}})
    described = write_slices(spec, tmp_path / "slices", log=lambda _: None)
    out = tmp_path / "slices" / "sel"
    assert (out / "valid.txt").read_text() == "valid line 2\nvalid line 3\nvalid line 4\n"
    assert (out / "train.txt").read_text() == (corpus / "train.txt").read_text()
    assert described["sel"]["valid"] == {"lines": [2, 5], "words": 12}  # 3 words + end of line
    stamp = (out / "valid.txt").stat().st_mtime_ns
    write_slices(spec, tmp_path / "slices", log=lambda _: None)
    assert (out / "valid.txt").stat().st_mtime_ns == stamp  # unchanged text is not rewritten
    with pytest.raises(LmdiscError, match="runs past the 10 lines"):
        write_slices(
            check_slices({"sel": {"from": str(corpus), "valid": [0, 11], "test": [0, 3]}}), tmp_path / "s2"
        )


def test_a_tokenizer_read_from_a_run_directory_is_part_of_a_stage_identity_by_content(tmp_path):
    first, moved = tmp_path / "a" / "base", tmp_path / "b" / "base"
    for directory, text in ((first, '{"kind": "x"}'), (moved, '{"kind": "x"}')):
        directory.mkdir(parents=True)
        (directory / "tokenizer.json").write_text(text)

    def identity(directory) -> dict:
        return resolved_identity("train", ["model=gpt", f"data.tokenizer_from={directory}"], CONF_DIR)

    assert identity(first)["data.tokenizer_from"].startswith("sha256:")
    assert identity(first) == identity(moved)  # the pipeline moved elsewhere: the same stage
    (moved / "tokenizer.json").write_text('{"kind": "y"}')
    assert identity(first) != identity(moved)
    # a pretrained model's directory that is not on this machine is kept as it resolves
    hf = resolved_identity("train", ["model=smollm2_135m"], CONF_DIR)["data.tokenizer_from"]
    assert hf == "<paths.cache_dir>/pretrained/SmolLM2-135M-Instruct"


def test_a_stage_process_reports_its_own_peak_memory(tmp_path):
    big = "import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.5)"
    with open(tmp_path / "log", "w") as out:
        code, peak = _call([sys.executable, "-c", big], out, {}, every_s=0.05)
    assert code == 0 and peak > 200 * 2**20
    with open(tmp_path / "log", "w") as out:
        code, small = _call(
            [sys.executable, "-c", "import sys, time; time.sleep(0.3); sys.exit(3)"], out, {}, every_s=0.05
        )
    assert code == 3 and small < 100 * 2**20  # its own size, not this process's (pytest with torch)
