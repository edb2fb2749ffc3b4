"""Transformers through the same entry points as the LSTMs: model=gpt with a BPE tokenizer, model=hf on
tiny models built in the test (no network), every loss, scoring, generation, export, bad input."""

import json

import pytest
import torch

from helpers import compose_train, disc_overrides, gpt_overrides, hf_overrides, quick_overrides, write_slice
from lmdisc.checkpoint import build_model, load_checkpoint
from lmdisc.cli.eval import evaluate
from lmdisc.cli.export import export
from lmdisc.cli.generate import sample
from lmdisc.cli.train import train
from lmdisc.cli.train_disc import train_discriminator
from lmdisc.errors import LmdiscError

pytestmark = pytest.mark.slow

LOSSES = {
    "ce": ["loss=ce"],
    "ppl_reg": ["loss=ppl_reg"],
    "ppl": ["loss=ppl"],
    "rkl_disc": ["loss=rkl_disc"],
    "control": ["loss=rkl_disc", "loss.discriminator=none"],
}


def _runs(name, gpt_run, hf_run, tiny_corpus, tiny_hf_models):
    if name == "gpt":
        return gpt_run, gpt_overrides(tiny_corpus)
    return hf_run, hf_overrides(tiny_corpus, tiny_hf_models["llama"])


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("model", ["gpt", "hf"])
def test_fast_dev_run_every_loss(
    tmp_path, tiny_corpus, tiny_hf_models, gpt_run, hf_run, model, loss, precision
):
    run, overrides = _runs(model, gpt_run, hf_run, tiny_corpus, tiny_hf_models)
    extra = list(LOSSES[loss])
    if loss in ("rkl_disc", "control"):  # fine-tuning: q_0 is the trained model
        extra += [f"init_from={run['lm_ckpt']}", f"loss.discriminator_ckpt={run['disc_ckpt']}"]
    cfg = compose_train(
        tmp_path,
        [*overrides, *extra, f"trainer.precision={precision}", "trainer.fast_dev_run=true", "logger=none"],
    )
    assert train(cfg)["global_step"] == 1


def test_transformer_training_reports_token_and_word_level_perplexity(gpt_run, hf_run):
    for run in (gpt_run, hf_run):
        metrics = run["metrics"]
        assert "blocks protocol (context 32" in metrics["protocol"]
        for split in ("val", "test"):
            # a subword tokenizer spends more than one token a word: word-level perplexity is higher
            assert metrics[f"{split}/word_ppl"] > metrics[f"{split}/ppl"] > 1
            assert metrics[f"{split}/words"] < metrics[f"{split}/tokens"]
        assert sum(b["words"] for b in metrics["buckets"]["test"]) == pytest.approx(metrics["test/words"])
    header = (gpt_run["run_dir"] / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"val/ppl", "val/word_ppl", "train/word_ppl"} <= set(header)
    ckpt = torch.load(gpt_run["lm_ckpt"], weights_only=True)
    assert ckpt["lmdisc"]["tokenizer"]["kind"] == "bpe" and "json" in ckpt["lmdisc"]["tokenizer"]
    hf = torch.load(hf_run["lm_ckpt"], weights_only=True)
    assert hf["lmdisc"]["hf_config"]["model_type"] == "llama"


def test_a_tiny_gpt2_trains_through_model_hf(tiny_hf_models, tiny_corpus, tmp_path):
    overrides = [*hf_overrides(tiny_corpus, tiny_hf_models["gpt2"]), "trainer.max_epochs=1", "logger=none"]
    metrics = train(compose_train(tmp_path, overrides))
    untrained = evaluate(
        compose_train(
            tmp_path / "zero",
            [
                "model=hf",
                f"model.name_or_path={tiny_hf_models['gpt2']}",
                "data=text",
                f"data.path={tiny_corpus}",
                "data.block_size=32",
            ],
            "eval",
        )
    )
    assert metrics["test/ppl"] < 0.8 * untrained["test/ppl"]  # one epoch learned something


def test_rare_word_comparison_works_per_word_for_a_subword_model(gpt_run):
    from lmdisc.analysis.compare import bucket_table, compare_checkpoints, word_table

    cmp = compare_checkpoints(gpt_run["lm_ckpt"], gpt_run["lm_ckpt"], "test")
    metrics = gpt_run["metrics"]
    # every word but the first (whose first token has no context) is scored whole
    assert cmp.words_scored == pytest.approx(metrics["test/words"], abs=1)
    assert cmp.ppl("before") == pytest.approx(metrics["test/word_ppl"], rel=0.01)
    assert sum(b["tokens"] for b in bucket_table(cmp)) == cmp.words_scored
    words = word_table(cmp, min_count=5)
    assert words and {"the", "<eol>"} <= {w["word"] for w in words} and all(w["change"] == 0 for w in words)


def test_the_lstm_word_level_perplexity_is_its_token_perplexity(trained_run):
    _, metrics = trained_run
    for split in ("val", "test"):
        assert metrics[f"{split}/word_ppl"] == pytest.approx(metrics[f"{split}/ppl"], rel=1e-12)


def test_eval_reproduces_training_numbers_and_scoring_reproduces_eval(gpt_run, tiny_corpus, tmp_path):
    metrics = gpt_run["metrics"]
    again = evaluate(compose_train(tmp_path / "eval", [f"ckpt={gpt_run['lm_ckpt']}"], "eval"))
    for key in ("val/ppl", "test/ppl", "test/word_ppl"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6)
    out = tmp_path / "scores.jsonl"
    cfg = compose_train(
        tmp_path / "score",
        [f"ckpt={gpt_run['lm_ckpt']}", f"score_file={tiny_corpus / 'test.txt'}", f"score_out={out}"],
        "eval",
    )
    summary = evaluate(cfg)
    assert summary["ppl"] == pytest.approx(metrics["test/ppl"], rel=1e-5)
    assert summary["word_ppl"] == pytest.approx(metrics["test/word_ppl"], rel=1e-5)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    words = (tiny_corpus / "test.txt").read_text().split()
    assert [r["word"] for r in rows[:5]] == words[:5] and all(r["tokens"] >= 1 for r in rows)
    total = sum(r["surprisal_bits"] for r in rows if r["surprisal_bits"] is not None)
    scored = sum(1 for r in rows if r["surprisal_bits"] is not None)
    # per word, the bits add up to the word-level perplexity of the words scored whole
    assert 2 ** (total / scored) == pytest.approx(summary["word_ppl"], rel=0.02)


def test_zero_shot_evaluation_of_a_pretrained_directory(tiny_hf_models, tiny_corpus, tmp_path):
    overrides = [
        "model=hf",
        f"model.name_or_path={tiny_hf_models['gpt2']}",
        "data=text",
        f"data.path={tiny_corpus}",
    ]
    metrics = evaluate(
        compose_train(tmp_path, [*overrides, "data.block_size=64", "data.eval_stride=32"], "eval")
    )
    assert (
        metrics["model"] == str(tiny_hf_models["gpt2"])
        and "context 64, evaluation stride 32" in metrics["protocol"]
    )
    assert metrics["test/ppl"] > 100  # an untrained model of 512 tokens: close to uniform
    bf16 = evaluate(
        compose_train(tmp_path / "bf16", [*overrides, "data.block_size=64", "precision=bf16-mixed"], "eval")
    )
    assert bf16["test/ppl"] == pytest.approx(metrics["test/ppl"], rel=0.02)


def test_a_pretrained_directory_scores_a_file_without_a_corpus(tiny_hf_models, tiny_corpus, tmp_path):
    model = ["model=hf", f"model.name_or_path={tiny_hf_models['gpt2']}"]
    out = tmp_path / "scores.jsonl"
    text = tiny_corpus / "test.txt"
    summary = evaluate(
        compose_train(tmp_path / "s", [*model, f"score_file={text}", f"score_out={out}"], "eval")
    )
    assert out.is_file() and summary["tokens_scored"] > 0
    # its window defaults to the model's context (64 here), as a zero-shot evaluation with that block
    corpus = ["data=text", f"data.path={tiny_corpus}", "data.block_size=64", "splits=[test]"]
    metrics = evaluate(compose_train(tmp_path / "e", [*model, *corpus], "eval"))
    assert summary["ppl"] == pytest.approx(metrics["test/ppl"], rel=1e-5)


def test_a_discriminator_on_transformer_features(gpt_run, tmp_path):
    cfg = compose_train(
        tmp_path,
        [*disc_overrides(gpt_run["lm_ckpt"], "lm_frozen"), "trainer.fast_dev_run=true"],
        "train_disc",
    )
    assert train_discriminator(cfg)["train_split"] == "heldout"


@pytest.mark.parametrize("which", ["gpt", "hf"])
def test_export_round_trip_gives_the_same_logits(gpt_run, hf_run, tmp_path, which):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = gpt_run if which == "gpt" else hf_run
    out = tmp_path / "exported"
    result = export(compose_train(tmp_path, [f"ckpt={run['lm_ckpt']}", f"out={out}"], "export"))
    assert result["max_abs_logit_difference"] <= 1e-5
    ours = build_model(load_checkpoint(run["lm_ckpt"])).eval()
    theirs = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer(" the company said its net income rose")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, ours(ids)[0], rtol=0, atol=1e-5)


def test_lstm_export_is_refused_by_name(trained_run, tmp_path):
    ckpt = trained_run[0] / "checkpoints" / "best.ckpt"
    with pytest.raises(LmdiscError, match="LSTMLanguageModel has no transformers architecture"):
        export(compose_train(tmp_path, [f"ckpt={ckpt}", f"out={tmp_path / 'x'}"], "export"))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("which", ["lstm", "gpt", "hf"])
def test_generation_is_seeded_and_greedy_is_deterministic(trained_run, gpt_run, hf_run, tmp_path, which):
    ckpt = {
        "lstm": trained_run[0] / "checkpoints" / "best.ckpt",
        "gpt": gpt_run["lm_ckpt"],
        "hf": hf_run["lm_ckpt"],
    }[which]
    base = [f"ckpt={ckpt}", "prompt=the company said", "max_new_tokens=12"]
    greedy = [
        sample(compose_train(tmp_path, [*base, "temperature=0", f"seed={s}"], "generate")) for s in (1, 2)
    ]
    assert greedy[0]["samples"] == greedy[1]["samples"]
    assert greedy[0]["samples"][0].startswith("the company said")
    drawn = sample(compose_train(tmp_path, [*base, "num_samples=2", "top_k=20", "top_p=0.9"], "generate"))
    again = sample(compose_train(tmp_path, [*base, "num_samples=2", "top_k=20", "top_p=0.9"], "generate"))
    assert drawn == again and len(drawn["samples"]) == 2


def test_a_bpe_checkpoint_reads_another_corpus_with_its_own_tokenizer(gpt_run, ptb_dir, tmp_path):
    other = write_slice(ptb_dir, tmp_path / "other", {"train": 200, "valid": 40, "test": 40})
    overrides = [
        *gpt_overrides(other),
        f"init_from={gpt_run['lm_ckpt']}",
        "trainer.fast_dev_run=true",
        "logger=none",
    ]
    # data.tokenizer=bpe asks for a BPE of the other corpus: not the checkpoint's, refused by name
    with pytest.raises(
        LmdiscError, match=r"init_from checkpoint .* has another tokenizer than the corpus: bpe"
    ):
        train(compose_train(tmp_path / "a", overrides))
    tokenizer_file = gpt_run["run_dir"] / "tokenizer.json"
    fine = train(compose_train(tmp_path / "b", [*overrides, f"data.tokenizer_from={tokenizer_file}"]))
    assert fine["global_step"] == 1
    metrics = evaluate(
        compose_train(
            tmp_path / "c",
            [f"ckpt={gpt_run['lm_ckpt']}", "data=text", f"data.path={other}", "data.block_size=32"],
            "eval",
        )
    )
    assert metrics["tokenizer"] == gpt_run["metrics"]["tokenizer"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.block_size=128"], r"data.block_size=128 is longer than the model's maximum positions \(32\)"),
        (["data.eval_stride=0"], "data.eval_stride must be a whole number in 1..data.block_size"),
        (["data.eval_stride=33"], "data.eval_stride must be a whole number in 1..data.block_size"),
    ],
)
def test_bad_windows_are_refused(tiny_corpus, tmp_path, overrides, message):
    with pytest.raises(LmdiscError, match=message):
        train(compose_train(tmp_path, [*gpt_overrides(tiny_corpus), *overrides]))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_block_longer_than_the_training_text_is_refused(ptb_dir, tmp_path):
    short = write_slice(ptb_dir, tmp_path / "short", {"train": 2, "valid": 20, "test": 20})
    overrides = [*gpt_overrides(short), "model.block_size=256", "data.block_size=256"]
    with pytest.raises(LmdiscError, match="longer than the training text"):
        train(compose_train(tmp_path, overrides))


def test_pretrained_model_paths_are_checked(tiny_corpus, tmp_path):
    with pytest.raises(LmdiscError, match="holds no model"):
        train(compose_train(tmp_path, [*hf_overrides(tiny_corpus, tmp_path)]))
    with pytest.raises(LmdiscError, match=r"downloads are off.*model.allow_download=true"):
        train(compose_train(tmp_path, [*hf_overrides(tiny_corpus, "someone/some-model-that-is-not-here")]))
    with pytest.raises(LmdiscError, match=r"data.tokenizer=hf reads a pretrained model's tokenizer"):
        train(compose_train(tmp_path, [*quick_overrides(tiny_corpus), "data.tokenizer=hf"]))


def test_logits_that_cannot_fit_are_refused_with_the_estimate(ptb_dir, tmp_path):
    overrides = [*quick_overrides(ptb_dir), "data.batch_size=20", "data.bptt=100000"]
    with pytest.raises(
        LmdiscError, match=r"training logits would need ~\d[\d,.]* GB \(20 × 46,480 × 10,000 tokens"
    ):
        train(compose_train(tmp_path, overrides))


def test_a_checkpoint_with_another_tokenizer_is_refused_for_evaluation(gpt_run, trained_run, tmp_path):
    lstm_ckpt = trained_run[0] / "checkpoints" / "best.ckpt"
    data = load_checkpoint(gpt_run["lm_ckpt"])["lmdisc"]["config"]["data"]
    overrides = [
        f"ckpt={lstm_ckpt}",
        "data=text",
        f"data.path={data['path']}",
        "data.tokenizer=bpe",
        "data.vocab_size=512",
    ]
    with pytest.raises(
        LmdiscError, match=r"has another tokenizer than the corpus: word tokenizer .* vs bpe tokenizer"
    ):
        evaluate(compose_train(tmp_path, overrides, "eval"))


def test_export_never_overwrites_a_directory_it_did_not_write(gpt_run, tmp_path):
    ckpt = f"ckpt={gpt_run['lm_ckpt']}"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(LmdiscError, match="is not an earlier export"):
        export(compose_train(tmp_path, [ckpt, f"out={foreign}"], "export"))
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "exported"
    export(compose_train(tmp_path, [ckpt, f"out={out}"], "export"))
    export(compose_train(tmp_path, [ckpt, f"out={out}"], "export"))  # an earlier export is replaced
    assert (out / "config.json").is_file() and not list(tmp_path.glob(".exported.*"))


def test_models_trained_here_need_their_checkpoint_and_hf_needs_a_path(tiny_corpus, tmp_path):
    with pytest.raises(LmdiscError, match="a model trained here has no weights without its checkpoint"):
        evaluate(compose_train(tmp_path, ["model=gpt", "data=text", f"data.path={tiny_corpus}"], "eval"))
    with pytest.raises(LmdiscError, match=r"generate.py needs ckpt=PATH, or a pretrained model"):
        sample(compose_train(tmp_path, ["model=gpt", "prompt=the"], "generate"))
    with pytest.raises(LmdiscError, match=r"model=hf needs model.name_or_path"):
        evaluate(compose_train(tmp_path, ["model=hf", "data=text", f"data.path={tiny_corpus}"], "eval"))


def test_a_pretrained_tokenizer_is_refused_for_a_model_trained_here(tiny_hf_models, tiny_corpus, tmp_path):
    overrides = [
        *quick_overrides(tiny_corpus),
        "data.tokenizer=hf",
        f"data.tokenizer_from={tiny_hf_models['llama']}",
    ]
    with pytest.raises(LmdiscError, match=r"data.tokenizer=hf is a pretrained model's own tokenizer"):
        train(compose_train(tmp_path, overrides))


def test_detokenised_training_text_is_not_evaluated_on_tokenised_text(gpt_run, tiny_corpus, tmp_path):
    overrides = [*gpt_overrides(tiny_corpus), "data.detokenize=true", "trainer.max_epochs=1", "logger=none"]
    train(compose_train(tmp_path / "lm", overrides))
    ckpt = tmp_path / "lm" / "run" / "checkpoints" / "best.ckpt"
    data = ["data=text", f"data.path={tiny_corpus}", "data.block_size=32"]
    with pytest.raises(LmdiscError, match=r"trained on detokenised text.*pass data.detokenize=true"):
        evaluate(compose_train(tmp_path / "e", [f"ckpt={ckpt}", *data], "eval"))
    metrics = evaluate(compose_train(tmp_path / "f", [f"ckpt={ckpt}", *data, "data.detokenize=true"], "eval"))
    assert metrics["detokenize"] is True


def test_scoring_a_checkpoint_reads_no_corpus(gpt_run, tiny_corpus, tmp_path):
    # the checkpoint's corpus is nowhere to be found: scoring a file needs only the checkpoint
    absent = ["data=text", f"data.path={tmp_path / 'nowhere'}", "data.block_size=32"]
    out = tmp_path / "s.jsonl"
    summary = evaluate(
        compose_train(
            tmp_path,
            [
                f"ckpt={gpt_run['lm_ckpt']}",
                *absent,
                f"score_file={tiny_corpus / 'test.txt'}",
                f"score_out={out}",
            ],
            "eval",
        )
    )
    assert summary["ppl"] == pytest.approx(gpt_run["metrics"]["test/ppl"], rel=1e-5)
