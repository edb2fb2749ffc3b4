"""results.md of the new pipelines from fabricated stage outputs (`report_only`, nothing trains):
the study's discriminator verdict, best lr by validation, full-test scoring and paired bootstrap;
the transfer table. Stage directories without a stage.json are trusted as they are (as a
pipeline written before resolved identities), so no train config is composed for them."""

import json
import math

import pytest
from omegaconf import OmegaConf

from helpers import compose_train
from lmdisc.cli.reproduce import reproduce
from lmdisc.reproduce import Pipeline

LRS, SEEDS = (1e-5, 5e-5), (1, 2, 3)
# per-line NLL of the control arm on the full test split: 40 lines, 10 words each
CONTROL_LINE_NLL = [30.0 + (i % 7) for i in range(40)]


def _write(path, payload) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def _buckets(ppl: float) -> dict:
    rows = [
        {
            "bucket": name,
            "tokens": 10,
            "words": 10.0,
            "share": 0.5,
            "mean_logprob": -math.log(ppl * k),
            "ppl": ppl * k,
        }
        for name, k in (("1-9", 10.0), ("10-99", 1.0))
    ]
    return {"test": rows, "val": rows}


def _scores(out_dir, shift_per_word: float) -> None:
    """eval.py score_file's summary and per-line files; NLL = control's + shift per word."""
    nll = [n + shift_per_word * 10 for n in CONTROL_LINE_NLL]
    rows = [
        {"line": i, "words": 10, "mean_surprisal_bits": n / 10 / math.log(2), "ppl": math.exp(n / 10)}
        for i, n in enumerate(nll)
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "test.scores.lines.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    word_ppl = math.exp(sum(nll) / 400)
    _write(out_dir / "test.scores.summary.json", {"ppl": word_ppl * 0.8, "word_ppl": word_ppl, "loss": 1.0})


def _study(tmp_path, freq_class_beats_zero_head: bool = True):
    cfg = compose_train(tmp_path, ["experiment=reproduce_smollm2_ptb", "report_only=true"], "reproduce")
    run = tmp_path / "run"
    base_ckpt = run / "base" / "checkpoints" / "best.ckpt"
    base_ckpt.parent.mkdir(parents=True)
    base_ckpt.write_bytes(b"q0")
    _write(run / "base" / "metrics.json", {"checkpoint": str(base_ckpt), "val/ppl": 50.0})
    _write(
        run / "base_eval" / "metrics.json",
        {"val/ppl": 50.0, "test/ppl": 48.0, "test/word_ppl": 60.0, "buckets": _buckets(48.0)},
    )
    pipeline_cfg = {**OmegaConf.to_container(cfg.pipeline, resolve=True), "device": []}
    shared = [f"paths.root_dir={cfg.paths.root_dir}", f"paths.data_dir={cfg.paths.data_dir}"]
    plan = Pipeline(pipeline_cfg, run, shared)
    freq, frozen = plan.disc_stages(str(base_ckpt))
    refused = [frozen] if freq_class_beats_zero_head else [frozen, freq]
    for stage in refused:
        _write(
            stage.out_dir / "zero_head.json",
            {"identity": stage.identity(), "message": "never beat the zero head"},
        )
    if freq_class_beats_zero_head:
        disc_ckpt = freq.out_dir / "checkpoints" / "best.ckpt"
        disc = {"val/disc_bce": 1.3831, "val/disc_acc": 0.52, "val/disc_auc": 0.55, "val/kl_q0_p": 0.004}
        _write(
            freq.out_dir / "metrics.json", {**disc, "checkpoint": str(disc_ckpt), "train_split": "heldout"}
        )
    for arm, shift in (("ce", 0.02), ("rkl_disc", -0.05), ("control", 0.0)):
        for lr in LRS:
            for seed in SEEDS:
                name = f"{arm}_lr{format(lr, '.15g')}_seed{seed}"
                val = 40.0 + seed * 0.1 + (1.0 if lr == LRS[0] else 0.0)  # 5e-5 is every arm's best
                metrics = {
                    "val/ppl": val,
                    "test/ppl": val - 1,
                    "test/word_ppl": val + 10,
                    "buckets": _buckets(val),
                    "train_tokens_per_s": 100.0,
                    "checkpoint": str(run / "finetune" / name / "checkpoints" / "best.ckpt"),
                }
                _write(run / "finetune" / name / "metrics.json", metrics)
                if lr == LRS[1]:
                    _scores(run / "evals" / "test_full" / name, shift)
    _scores(run / "evals" / "test_full" / "base", 0.1)
    return cfg, run


def test_the_study_reports_the_discriminator_verdict_and_paired_bootstrap_on_the_full_test(tmp_path):
    cfg, run = _study(tmp_path)
    text = reproduce(cfg).read_text()
    assert "| discriminator_freq_class (chosen) | 1.38310 |" in text
    assert "| discriminator_lm_frozen | ≥ 1.38629 (nothing saved) | – | – | – | **no** |" in text
    assert "`select` of `" in text and "valid lines [0, 500]" in text
    assert "| rkl_disc | 5e-05 | 40.20 ± 0.10 |" in text  # the grid's slice, best lr by validation
    assert "scored by `test_full`" in text
    # the base's full-test row: its word-level PPL (exp of 0.1 nats a word above control's) and token-level
    base_words = math.exp(sum(n + 1.0 for n in CONTROL_LINE_NLL) / 400)
    assert f"| base | – | 1 | {base_words:.2f} | {base_words * 0.8:.2f} | – |" in text
    # known answers: rkl_disc's lines are control's minus 0.05 nats a word, ce's plus 0.02
    row = next(line for line in text.splitlines() if line.startswith("| rkl_disc − control |"))
    assert "-0.05000 [-0.05000, -0.05000]" in row and "rkl_disc lower" in row and "| 3 |" in row
    row = next(line for line in text.splitlines() if line.startswith("| rkl_disc − ce |"))
    assert "-0.07000 [-0.07000, -0.07000]" in row
    results = json.loads((run / "results.json").read_text())
    paired = results["bootstrap"]["test_full:rkl_disc-control"]
    assert paired["seeds_paired"] == [1, 2, 3] and paired["lines"] == 40
    control_ppl = math.exp(sum(CONTROL_LINE_NLL) / 400)
    assert paired["delta_word_ppl"] == pytest.approx(control_ppl * (math.exp(-0.05) - 1))
    assert len(results["runs"]) == 18 and results["skipped_arms"] == []


def test_when_no_discriminator_beats_the_zero_head_the_report_says_so_and_rkl_disc_is_left_out(tmp_path):
    cfg, run = _study(tmp_path, freq_class_beats_zero_head=False)
    text = reproduce(cfg).read_text()
    assert "**No discriminator beat the zero head.** The arms that need one were not run: rkl_disc." in text
    results = json.loads((run / "results.json").read_text())
    assert results["planned_runs"] == 12 and {r["arm"] for r in results["runs"]} == {"ce", "control"}
    assert "| rkl_disc |" not in text


def test_the_transfer_table_has_every_arm_with_its_other_corpus_parameters_speed_and_memory(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=smollm2_wt2_transfer", "report_only=true"], "reproduce")
    run = tmp_path / "run"
    _write(
        run / "base_eval" / "metrics.json", {"val/word_ppl": 30.0, "test/word_ppl": 34.37, "val/ppl": 16.0}
    )
    _write(run / "evals" / "ptb" / "base" / "metrics.json", {"test/word_ppl": 87.53})
    arms = {"head": 0.0003, "last_n": 0.0001, "lora": 0.001, "full": 3e-05}
    for i, (arm, lr) in enumerate(arms.items()):
        name = f"{arm}_lr{format(lr, '.15g')}_seed1"
        (run / "finetune" / name / "checkpoints").mkdir(parents=True)
        (run / "finetune" / name / "checkpoints" / "best.ckpt").write_bytes(
            b"w"
        )  # evaluate=false: no metrics
        _write(
            run / "finetune" / name / "metrics.json",
            {"trainable_parameters": 1000 * (i + 1), "train_tokens_per_s": 150.0},
        )
        _write(run / "finetune" / name / "resources.json", {"peak_rss_bytes": 3 * 2**30})
        _write(run / "evals" / "ptb" / name / "metrics.json", {"test/word_ppl": 90.0 + i})
        if arm != "full":  # its WikiText-2 scoring has not finished
            scores = {
                "val/ppl": 15.0 - i,
                "val/word_ppl": 28.0 - i,
                "test/ppl": 15.5,
                "test/word_ppl": 33.0 - i,
            }
            _write(run / "evals" / "wt2" / name / "metrics.json", scores)
    text = reproduce(cfg).read_text()
    assert "Base: model=smollm2_135m (zero-shot)." in text
    assert "**Partial: 3 of 4 runs have finished and been scored.**" in text
    assert "| base | – | – | 30.00 | 34.37 | 87.53 | – | – | – |" in text
    assert "| lora | 0.001 | 1 | 26.00 | 31.00 | 92.00 | 3,000 | 150 | 3.00 |" in text
    assert "| full |" not in text
    results = json.loads((run / "results.json").read_text())
    lora = next(r for r in results["runs"] if r["arm"] == "lora")
    assert lora["checkpoint_used"].endswith("lora_lr0.001_seed1/checkpoints/best.ckpt")
    assert lora["val/ppl"] == 13.0  # the `wt2` evaluation's numbers stand for the run's own (score_with)


# smollm2_ppl_reg: per optimiser, (alpha arm, NLL shift per word against CE); the norms logged
# before clipping: SGD's mostly above the clip (1.0), AdamW's below
PPL_REG_SHIFTS = {"ce": 0.0, "alpha1e-4": 0.0, "alpha1e-3": -0.01, "alpha1e-2": 0.03}
GRAD_NORMS = {"sgd": [2.0, 3.0, 0.5, 4.0], "adamw": [0.25, 0.5, 0.75, 1.5]}


def test_the_ppl_reg_report_pairs_each_alpha_with_ce_and_says_how_often_clipping_acted(tmp_path):
    cfg = compose_train(tmp_path, ["experiment=smollm2_ppl_reg", "report_only=true"], "reproduce")
    run = tmp_path / "run"
    _write(
        run / "base_eval" / "metrics.json",
        {"val/ppl": 40.0, "test/ppl": 41.0, "test/word_ppl": 80.0, "buckets": _buckets(41.0)},
    )
    _scores(run / "evals" / "test_lines" / "base", 0.1)
    for optimiser, lr in (("adamw", 0.0002), ("sgd", 0.5)):
        for objective, shift in PPL_REG_SHIFTS.items():
            name = f"{optimiser}_{objective}_lr{format(lr, '.15g')}_seed1"
            out = run / "finetune" / name
            val = 39.0 + 100 * shift
            _write(
                out / "metrics.json",
                {
                    "val/ppl": val,
                    "test/ppl": val,
                    "test/word_ppl": val + 40,
                    "buckets": _buckets(val),
                    "checkpoint": str(out / "checkpoints" / "best.ckpt"),
                },
            )
            (out / "config_resolved.yaml").write_text("trainer:\n  gradient_clip_val: 1.0\n")
            (out / "csv" / "version_0").mkdir(parents=True)
            rows = "".join(f"{step},{norm}\n" for step, norm in enumerate(GRAD_NORMS[optimiser]))
            (out / "csv" / "version_0" / "metrics.csv").write_text("step,train/grad_norm\n" + rows)
            _scores(run / "evals" / "test_lines" / name, shift)
    text = reproduce(cfg).read_text()
    assert "`model=smollm2_135m (zero-shot)`: val 40.00, test 41.00." in text
    assert "## Discriminator" not in text  # the pipeline has none (discriminator: null)
    row = next(line for line in text.splitlines() if line.startswith("| adamw_alpha1e-3 − adamw_ce |"))
    assert "-0.01000 [-0.01000, -0.01000]" in row and "adamw_alpha1e-3 lower" in row
    row = next(line for line in text.splitlines() if line.startswith("| sgd_alpha1e-2 − sgd_ce |"))
    assert "+0.03000 [+0.03000, +0.03000]" in row and "sgd_alpha1e-2 higher" in row
    assert "| sgd_ce | 1 | 4 | 2.5 | 3 (75%) |" in text
    assert "| adamw_alpha1e-2 | 1 | 4 | 0.625 | 1 (25%) |" in text


def test_a_transfer_grid_whose_every_rate_finished_is_not_called_partial():
    from lmdisc.reproduce.report_transfer import transfer_lines

    runs = [
        {"arm": "finetuned", "lr": lr, "seed": 1, "val/ppl": val, "val/word_ppl": 3 * val, "dir": f"/r/{lr}"}
        for lr, val in ((1e-4, 51.0), (3e-4, 38.0))
    ]
    results = {"runs": runs, "planned_runs": 2, "base": {}, "base_checkpoint": "/b.ckpt", "base_evals": {}}
    text = "\n".join(transfer_lines(results, "t", "c")[0])
    assert "Partial" not in text and "| finetuned | 51.00 | **38.00** |" in text
    results["runs"], results["planned_runs"] = runs[:1], 2
    assert "**Partial: 1 of 2 runs have finished and been scored.**" in "\n".join(
        transfer_lines(results, "t", "c")[0]
    )
