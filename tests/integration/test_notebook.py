"""notebooks/rare_words.ipynb and lmdisc.analysis.compare on tiny before/after checkpoints."""

import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, compose_train, quick_overrides
from lmdisc.analysis.compare import bucket_table, compare_checkpoints, word_table
from lmdisc.cli.train import train
from lmdisc.errors import LmdiscError

pytestmark = pytest.mark.slow

NOTEBOOK = REPO / "notebooks" / "rare_words.ipynb"


@pytest.fixture(scope="module")
def fine_tuned(trained_run, tiny_corpus, tmp_path_factory) -> Path:
    """One more epoch from trained_run's best weights, at a high rate: an AFTER that differs."""
    run_dir, _ = trained_run
    tmp = tmp_path_factory.mktemp("finetuned")
    overrides = [
        *quick_overrides(tiny_corpus),
        f"init_from={run_dir / 'checkpoints' / 'best.ckpt'}",
        "trainer.max_epochs=1",
        "optim.optimizer.lr=5",
        "evaluate=false",
        "logger=none",
    ]
    train(compose_train(tmp, overrides))
    return tmp / "run" / "checkpoints" / "best.ckpt"


def test_a_checkpoint_compared_with_itself_changes_nothing(trained_run):
    run_dir, metrics = trained_run
    best = run_dir / "checkpoints" / "best.ckpt"
    cmp = compare_checkpoints(best, best, "test")
    assert cmp.words_scored == metrics["test/tokens"]
    assert torch.equal(cmp.before, cmp.after)
    assert cmp.ppl("before") == pytest.approx(metrics["test/ppl"], rel=1e-6)
    buckets = bucket_table(cmp)
    assert sum(b["tokens"] for b in buckets) == cmp.words_scored
    assert all(b["change"] == 0 for b in buckets if b["tokens"])
    # the same buckets, and the same numbers, as training's standard-protocol table
    for ours, theirs in zip(buckets, metrics["buckets"]["test"], strict=True):
        assert ours["tokens"] == theirs["tokens"]
        assert ours["logprob_before"] == pytest.approx(theirs["mean_logprob"], rel=1e-9, nan_ok=True)
    words = word_table(cmp, min_count=3)
    assert words and all(w["change"] == 0 and w["occurrences"] >= 3 for w in words)
    assert sum(w["occurrences"] for w in word_table(cmp, min_count=1)) == cmp.words_scored


def test_word_table_is_sorted_and_filtered(trained_run, fine_tuned):
    run_dir, _ = trained_run
    cmp = compare_checkpoints(run_dir / "checkpoints" / "best.ckpt", fine_tuned, "valid")
    gainers, losers = word_table(cmp, 5, order="gain"), word_table(cmp, 5, order="loss")
    changes = [w["change"] for w in gainers]
    assert changes == sorted(changes, reverse=True) and changes[0] != 0
    assert [w["change"] for w in losers] == sorted(changes)
    assert {w["word"] for w in losers} == {w["word"] for w in gainers}
    assert all(w["occurrences"] >= 5 for w in gainers)
    # the per-word means recombine into the overall mean change
    total = sum(w["change"] * w["occurrences"] for w in word_table(cmp, min_count=1))
    assert total == pytest.approx(float((cmp.after - cmp.before).sum()), rel=1e-9)


def test_checkpoints_with_different_tokenizers_are_refused(trained_run, tmp_path):
    run_dir, _ = trained_run
    best = run_dir / "checkpoints" / "best.ckpt"
    other = torch.load(best, weights_only=True)
    words = other["lmdisc"]["tokenizer"]["words"]
    words[0], words[1] = words[1], words[0]
    torch.save(other, tmp_path / "swapped.ckpt")
    with pytest.raises(LmdiscError, match="another tokenizer"):
        compare_checkpoints(best, tmp_path / "swapped.ckpt")


def _table(cell) -> list[dict]:
    """The fixed-width table a cell printed (after its title line) as rows of strings."""
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    lines = text.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[0] in ("bucket", "word"))
    header = lines[start].split()
    return [dict(zip(header, line.split(), strict=True)) for line in lines[start + 1 :]]


def _kernel_manager(tmp_path: Path):
    """A `python3` kernel that runs this interpreter (so lmdisc is importable), whatever other
    kernelspecs the machine has."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path / "kernels"
    write_kernel_spec(kernels / "python3")
    km = KernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )
    assert km.kernel_spec.argv[0] == sys.executable
    return km


def test_rare_words_notebook_runs(trained_run, fine_tuned, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    run_dir, metrics = trained_run
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it without outputs"
    monkeypatch.setenv("LMDISC_BEFORE_CKPT", str(run_dir / "checkpoints" / "best.ckpt"))
    monkeypatch.setenv("LMDISC_AFTER_CKPT", str(fine_tuned))
    monkeypatch.setenv("LMDISC_SPLIT", "test")
    monkeypatch.setenv("LMDISC_MIN_COUNT", "4")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=120,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    cells = {tag: c for c in nb.cells for tag in c.metadata.get("tags", [])}

    buckets = _table(cells["buckets"])
    assert sum(int(b["tokens"]) for b in buckets) == metrics["test/tokens"]
    assert f"test: {metrics['test/tokens']} words scored" in cells["score"].outputs[0]["text"]
    assert any("image/png" in o.get("data", {}) for o in cells["buckets"].outputs), "no bucket plot"

    gainers, losers = _table(cells["gainers"]), _table(cells["losers"])
    assert gainers and losers
    gains = [float(w["change"]) for w in gainers]
    assert gains == sorted(gains, reverse=True) and gains[0] > 0
    losses = [float(w["change"]) for w in losers]
    assert losses == sorted(losses)
    assert all(int(w["occurrences"]) >= 4 for w in gainers + losers)
