"""Atomic writes: the file appears whole or not at all, with the permissions a plain write gives."""

import os
import stat

import pytest
import torch

from lmdisc.io import atomic_torch_save, atomic_write_json, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_files_get_the_umask_mode_not_the_private_temporary_one(tmp_path, umask_022):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert _mode(plain) == 0o644
    atomic_write_text("x", tmp_path / "a.txt")
    atomic_write_json({"a": 1}, tmp_path / "a.json")
    atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "a.ckpt")
    for name in ("a.txt", "a.json", "a.ckpt"):
        assert _mode(tmp_path / name) == 0o644, name


def test_a_replaced_file_keeps_its_mode(tmp_path, umask_022):
    path = tmp_path / "results.md"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text("new", path)
    assert path.read_text() == "new" and _mode(path) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.ckpt"
    atomic_torch_save({"w": torch.ones(2)}, path)
    with pytest.raises(Exception, match="pickle"):  # fails half-way through writing the temporary
        atomic_torch_save({"w": torch.zeros(2), "f": lambda: 0}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]
