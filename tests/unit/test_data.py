import functools
import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from lmdisc.data import LMDataModule, Window, WordTokenizer, load_corpus
from lmdisc.data.download import CorpusSource, ensure_corpus
from lmdisc.errors import LmdiscError

LINES = {"train": " a b c \n b c d <unk> \n", "valid": " a b \n", "test": " c <unk> \n"}


def _write(directory: Path, contents: dict[str, str | bytes]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, text in contents.items():
        data = text if isinstance(text, bytes) else text.encode()
        (directory / f"{split}.txt").write_bytes(data)
    return directory


def test_vocabulary_has_one_eos_per_line_and_maps_unknowns(tmp_path):
    corpus = load_corpus(_write(tmp_path / "c", {**LINES, "train": " a b c \n b <unk> d \n"}))
    assert corpus.tokenizer.words == ["a", "b", "c", "<eos>", "<unk>", "d"]
    assert corpus["train"].ids.tolist() == [0, 1, 2, 3, 1, 4, 5, 3]
    encoded = corpus.tokenizer.encode_lines([" zz a "])
    assert encoded.ids.tolist() == [4, 0, 3] and encoded.unknown == 1
    # the blank is reserved past the predicted ids: noising never changes the word list
    assert corpus.tokenizer.blank_id == 6 and corpus.tokenizer.vocab_size == 6


def test_ptb_and_wikitext2_vocabulary_sizes(ptb_dir):
    assert load_corpus(ptb_dir).tokenizer.vocab_size == 10_000
    wt2 = ptb_dir.parent / "wikitext-2"
    if not (wt2 / "train.txt").is_file():
        pytest.skip("wikitext-2 not available")
    corpus = load_corpus(wt2)
    assert corpus.tokenizer.vocab_size == 33_278
    assert len(corpus["valid"]) == 217_646


def test_missing_directory_and_files_are_named(tmp_path):
    dm = LMDataModule(path=str(tmp_path / "nowhere"))
    with pytest.raises(LmdiscError, match="does not exist"):
        dm.prepare_data()
    _write(tmp_path / "partial", {"train": LINES["train"]})
    with pytest.raises(LmdiscError, match=r"lacks valid\.txt, test\.txt"):
        LMDataModule(path=str(tmp_path / "partial")).prepare_data()


def test_empty_and_non_utf8_files_are_refused(tmp_path):
    with pytest.raises(LmdiscError, match="empty"):
        load_corpus(_write(tmp_path / "e", {**LINES, "valid": " \n\n"}))
    with pytest.raises(LmdiscError, match="not valid UTF-8"):
        load_corpus(_write(tmp_path / "u", {**LINES, "test": b" caf\xe9 \n"}))


def test_unknown_word_without_unk_is_refused(tmp_path):
    with pytest.raises(LmdiscError, match="not in the vocabulary"):
        load_corpus(_write(tmp_path / "c", {"train": " a b \n", "valid": " a \n", "test": " zebra \n"}))


@pytest.mark.parametrize("field", ["batch_size", "bptt", "eval_batch_size"])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_sizes_are_refused(tmp_path, field, value):
    with pytest.raises(LmdiscError, match=field):
        LMDataModule(path=str(tmp_path), **{field: value})


def test_cache_is_keyed_by_file_checksums(tmp_path):
    directory = _write(tmp_path / "c", LINES)
    cache = tmp_path / "cache"
    first = load_corpus(directory, cache_dir=cache)
    assert len(list(cache.glob("corpus-*.pt"))) == 1
    assert torch.equal(load_corpus(directory, cache_dir=cache)["train"].ids, first["train"].ids)
    (directory / "train.txt").write_text(" a b c e <unk> \n")
    changed = load_corpus(directory, cache_dir=cache)
    assert "e" in changed.tokenizer and len(list(cache.glob("corpus-*.pt"))) == 2


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def local_server(tmp_path):
    """Serve a directory on 127.0.0.1 (the download path is never tested against the internet)."""
    root = _write(tmp_path / "served", LINES)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def _source(base: str, root: Path, corrupt: str | None = None) -> CorpusSource:
    sums = {s: hashlib.sha256((root / f"{s}.txt").read_bytes()).hexdigest() for s in LINES}
    if corrupt:
        sums[corrupt] = "0" * 64
    return CorpusSource("toy", {s: f"{base}/{s}.txt" for s in LINES}, sums)


def test_download_verifies_sha256(local_server, tmp_path):
    base, root = local_server
    target = tmp_path / "data" / "toy"
    ensure_corpus(target, _source(base, root))
    assert all((target / f"{s}.txt").read_bytes() == (root / f"{s}.txt").read_bytes() for s in LINES)


def test_corrupt_download_is_refused_and_nothing_is_left(local_server, tmp_path):
    base, root = local_server
    target = tmp_path / "data" / "toy"
    with pytest.raises(LmdiscError, match="sha256"):
        ensure_corpus(target, _source(base, root, corrupt="valid"))
    assert not (target / "valid.txt").exists()
    assert not list(target.glob(".*part"))


def test_offline_error_names_directory_and_files(tmp_path):
    source = CorpusSource("toy", {s: f"http://127.0.0.1:9/{s}.txt" for s in LINES})
    with pytest.raises(LmdiscError, match=r"Put train\.txt, valid\.txt, test\.txt in .*nowhere"):
        ensure_corpus(tmp_path / "nowhere", source, timeout=2)


def test_wikitext103_is_never_downloaded_unverified(tmp_path):
    dm = LMDataModule(path=str(tmp_path / "wt103"), source="wikitext-103")
    with pytest.raises(LmdiscError, match="no verified download source"):
        dm.prepare_data()


def test_datamodule_serves_rank_shards(tmp_path):
    directory = _write(tmp_path / "c", {**LINES, "train": " a b c <unk> \n" * 50})
    dm = LMDataModule(path=str(directory), batch_size=2, bptt=4)
    with pytest.raises(RuntimeError, match="bind_model"):
        dm.train_dataloader()
    dm.bind_model(torch.nn.LSTM(1, 1))  # a recurrent model: the stream protocol
    window = next(iter(dm.train_dataloader()))
    assert isinstance(window, Window) and window.inputs.shape == (2, 4) and window.targets.shape == (2, 4)
    assert torch.equal(window.inputs[:, 1:], window.targets[:, :-1])
    assert isinstance(dm.tokenizer, WordTokenizer)


def test_a_resumed_loader_skips_the_done_batches_in_its_first_epoch_only():
    """SkipFirst: the resumed epoch starts after the batches already done; a loader that is not
    rebuilt every epoch (a stream without variable BPTT) reads every later epoch whole."""
    from lmdisc.data.resumable import SkipFirst

    sampler = SkipFirst(range(6), 4)
    assert len(sampler) == 6
    assert list(sampler) == [4, 5]
    assert list(sampler) == list(range(6))
