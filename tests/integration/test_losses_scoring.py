"""Loss presets in real runs, frequency buckets and per-token scoring through the CLIs."""

import json

import pytest

from helpers import compose_train, quick_overrides
from lmdisc.cli.eval import evaluate
from lmdisc.cli.train import train
from lmdisc.errors import LmdiscError

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("loss", ["ce", "ppl_reg", "ppl"])
def test_every_loss_preset_runs_under_each_precision(tmp_path, tiny_corpus, loss, precision):
    overrides = [
        *quick_overrides(tiny_corpus),
        f"loss={loss}",
        f"trainer.precision={precision}",
        "trainer.fast_dev_run=true",
        "logger=none",
    ]
    metrics = train(compose_train(tmp_path, overrides))
    assert metrics["global_step"] == 1


def test_added_term_from_the_command_line(tmp_path, tiny_corpus):
    overrides = [
        *quick_overrides(tiny_corpus),
        "+loss/term@loss.terms.ppl=ppl",
        "loss.terms.ppl.weight=0.01",
        "trainer.max_epochs=1",
        "evaluate=false",
    ]
    train(compose_train(tmp_path, overrides))
    header = (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/ce", "train/ppl", "train_eval/ppl", "gap/ppl", "val/entropy", "val/ece"} <= set(header)


def test_training_reports_buckets_and_plot(trained_run):
    run_dir, metrics = trained_run
    test_buckets = metrics["buckets"]["test"]
    assert sum(b["tokens"] for b in test_buckets) == metrics["test/tokens"]
    assert sum(b["share"] for b in test_buckets) == pytest.approx(1.0)
    assert (run_dir / "buckets.png").stat().st_size > 10_000


def test_scoring_a_file_reproduces_eval_perplexity(trained_run, tiny_corpus, tmp_path):
    run_dir, metrics = trained_run
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    out = tmp_path / "scores.csv"
    cfg = compose_train(
        tmp_path, [f"ckpt={ckpt}", f"score_file={tiny_corpus / 'test.txt'}", f"score_out={out}"], "eval"
    )
    summary = evaluate(cfg)
    assert summary["ppl"] == pytest.approx(metrics["test/ppl"], rel=1e-5)
    assert summary["tokens_scored"] == metrics["test/tokens"]
    rows = out.read_text().splitlines()
    assert rows[0].startswith("line,position,word,in_vocab,surprisal_bits,entropy_bits")
    assert len(rows) == 1 + metrics["test/tokens"] + 1  # header + every token (the first unscored)
    lines = [json.loads(x) for x in (tmp_path / "scores.lines.jsonl").read_text().splitlines()]
    assert len(lines) == 80 and all(r["ppl"] > 1 for r in lines)


def test_scoring_counts_unknown_words(trained_run, tmp_path):
    run_dir, _ = trained_run
    text = tmp_path / "odd.txt"
    text.write_text(" the zyzzyva said qwertyuiop \n the end \n", encoding="utf-8")
    cfg = compose_train(
        tmp_path, [f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"score_file={text}"], "eval"
    )
    summary = evaluate(cfg)
    assert summary["unknown_words"] >= 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "odd.scores.jsonl").read_text().splitlines()]
    assert [r["word"] for r in rows[:3]] == ["the", "zyzzyva", "said"]
    assert rows[1]["in_vocab"] is False and rows[0]["surprisal_bits"] is None


@pytest.mark.parametrize("content,match", [(b" \n \n", "empty"), (b" caf\xe9 \n", "UTF-8")])
def test_scoring_refuses_empty_or_non_utf8_files(trained_run, tmp_path, content, match):
    run_dir, _ = trained_run
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    cfg = compose_train(
        tmp_path, [f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"score_file={bad}"], "eval"
    )
    with pytest.raises(LmdiscError, match=match):
        evaluate(cfg)
