"""SecretStore: one owner-only file per secret, atomic writes, safe names, the default place."""

from __future__ import annotations

import stat

import pytest

from resources.secret_store import SecretStore, default_secrets_dir


def test_put_get_delete_round_trip_with_owner_only_permissions(tmp_path):
    store = SecretStore(tmp_path / "secrets")
    assert store.get("teyca-token-demo") is None
    store.put("teyca-token-demo", "abc123")
    assert store.get("teyca-token-demo") == "abc123"
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "secrets" / "teyca-token-demo").stat().st_mode) == 0o600
    store.put("teyca-token-demo", "def456")  # replaced, no leftovers of the atomic write
    assert store.get("teyca-token-demo") == "def456"
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == ["teyca-token-demo"]
    assert store.delete("teyca-token-demo") is True
    assert store.delete("teyca-token-demo") is False
    assert store.get("teyca-token-demo") is None


def test_an_existing_directory_is_tightened(tmp_path):
    loose = tmp_path / "secrets"
    loose.mkdir(mode=0o755)
    SecretStore(loose).put("x", "1")
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "sp ace"])
def test_names_cannot_leave_the_directory(tmp_path, name):
    with pytest.raises(ValueError):
        SecretStore(tmp_path).put(name, "v")


def test_empty_values_are_refused_and_never_echoed(tmp_path):
    with pytest.raises(ValueError) as refused:
        SecretStore(tmp_path).put("x", "")
    assert "x" in str(refused.value)


def test_default_dir_is_the_env_var_else_secrets_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("MEMBERFLOW_SECRETS_DIR", raising=False)
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    assert default_secrets_dir() == (tmp_path / "data" / "secrets").resolve()
    monkeypatch.setenv("MEMBERFLOW_SECRETS_DIR", str(tmp_path / "elsewhere"))
    assert default_secrets_dir() == (tmp_path / "elsewhere").resolve()
    assert SecretStore().directory == (tmp_path / "elsewhere").resolve()
