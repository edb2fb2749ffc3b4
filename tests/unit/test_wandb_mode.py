"""W&B's mode is chosen from the environment and ~/.netrc alone: online with credentials, else offline."""

import pytest

from lmdisc.wandb_tracking import choose_mode, credentials_source


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_offline_without_credentials(no_credentials):
    assert credentials_source() is None
    assert choose_mode()[0] == "offline"


def test_online_with_an_api_key(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert choose_mode() == ("online", "credentials from WANDB_API_KEY")


def test_online_with_a_netrc_entry_for_the_wandb_host_only(no_credentials, monkeypatch):
    netrc = no_credentials / ".netrc"
    netrc.write_text("machine example.org login user password secret\n")
    netrc.chmod(0o600)
    assert choose_mode()[0] == "offline"
    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert choose_mode()[0] == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a private server: its own entry
    assert choose_mode()[0] == "offline"


def test_an_explicit_wandb_mode_wins(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert choose_mode() == ("offline", "WANDB_MODE is set")
