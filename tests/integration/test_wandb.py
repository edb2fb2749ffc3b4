"""W&B offline first: a multirun with no credentials writes one offline run per job and touches no
network; a resumed run continues its W&B run id; the run records its environment."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from helpers import DATA_DIR, REPO, compose_train, quick_overrides
from lmdisc.checkpoint import load_checkpoint
from lmdisc.cli.train import train

pytestmark = pytest.mark.slow


class ConnectionSink:
    """A listening socket on 127.0.0.1 that counts the connections made to it."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.settimeout(2)
            try:
                self.requests.append(conn.recv(200))
            except OSError:
                self.requests.append(b"")
            conn.close()


def _offline_env(home, sink: ConnectionSink) -> dict:
    """No credentials anywhere, and every way out of the machine pointed at the sink."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    url = f"http://127.0.0.1:{sink.port}"
    env.update(
        HOME=str(home),
        WANDB_BASE_URL=url,
        HTTP_PROXY=url,
        HTTPS_PROXY=url,
        http_proxy=url,
        https_proxy=url,
        NO_PROXY="",
        OMP_NUM_THREADS="1",
    )
    return env


def _offline_runs(job_dir):
    return sorted((job_dir / "wandb").glob("offline-run-*"))


def test_a_two_job_multirun_without_credentials_runs_offline_with_no_network(tiny_corpus, tmp_path):
    sink = ConnectionSink()
    sweep = tmp_path / "sweep"
    command = [
        sys.executable,
        "-m",
        "lmdisc.cli.train",
        "-m",
        *quick_overrides(tiny_corpus),
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=8",
        "trainer.limit_val_batches=4",
        "evaluate=false",
        "logger=[csv,wandb]",
        "seed=1,2",
        f"paths.root_dir={tmp_path}",
        f"paths.data_dir={DATA_DIR}",
        f"hydra.sweep.dir={sweep}",
    ]
    home = tmp_path / "home"
    home.mkdir()
    done = subprocess.run(
        command, cwd=REPO, env=_offline_env(home, sink), capture_output=True, text=True, timeout=600
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "W&B: offline (no credentials" in output
    runs = [_offline_runs(sweep / str(job)) for job in (0, 1)]
    assert [len(r) for r in runs] == [1, 1], runs
    ids = {r[0].name.rsplit("-", 1)[1] for r in runs}
    assert len(ids) == 2  # wandb.finish() between jobs: each job its own run
    assert sink.connections == 0, sink.requests
    for job in (0, 1):
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert metrics["environment"]["packages"]["torch"] and metrics["environment"]["packages"]["wandb"]
        assert json.loads((sweep / str(job) / "environment.json").read_text()) == metrics["environment"]
        assert metrics["train_tokens_per_s"] > 0


def test_a_resumed_run_keeps_its_wandb_run_id(tiny_corpus, tmp_path, monkeypatch):
    for name in [k for k in os.environ if k.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    quick = [*quick_overrides(tiny_corpus), "logger=wandb", "evaluate=false", "trainer.limit_val_batches=4"]
    first = tmp_path / "first"
    train(compose_train(first, [*quick, "trainer.max_epochs=1", "trainer.limit_train_batches=6"]))
    last = first / "run" / "checkpoints" / "last.ckpt"
    run_id = load_checkpoint(last)["lmdisc"]["wandb_run_id"]
    assert [p.name.endswith(run_id) for p in _offline_runs(first / "run")] == [True]
    second = tmp_path / "second"
    train(
        compose_train(
            second, [*quick, "trainer.max_epochs=2", "trainer.limit_train_batches=6", f"ckpt_path={last}"]
        )
    )
    resumed = _offline_runs(second / "run")
    assert len(resumed) == 1 and resumed[0].name.endswith(f"-{run_id}")
    assert load_checkpoint(second / "run" / "checkpoints" / "last.ckpt")["lmdisc"]["wandb_run_id"] == run_id
