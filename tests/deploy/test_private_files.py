"""Files holding secrets are written 0600 from the first byte, by one helper."""

from __future__ import annotations

import configparser
import json
import os
import stat

import pytest

from include.deploy.airflow_passwords import write_passwords
from include.deploy.mlflow_auth_config import write_config
from include.deploy.private import write_private


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_private_creates_the_folder_and_a_0600_file(tmp_path):
    path = tmp_path / "new" / "secret.env"
    old_umask = os.umask(0)  # a permissive umask must not widen the file
    try:
        write_private(path, "A=1\n")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "A=1\n" and _mode(path) == 0o600


def test_write_private_narrows_an_existing_file_and_replaces_its_text(tmp_path):
    path = tmp_path / "secret.env"
    path.write_text("an older, longer content\n")
    path.chmod(0o644)
    write_private(path, "B=2\n")
    assert path.read_text() == "B=2\n" and _mode(path) == 0o600


def test_a_reader_of_the_old_file_never_sees_the_new_secret(tmp_path):
    path = tmp_path / "secret.env"
    path.write_text("OLD=1\n")
    path.chmod(0o644)
    reader = open(path)  # noqa: SIM115 - opened by someone while the file was readable
    try:
        write_private(path, "NEW=secret\n")
        assert reader.read() == "OLD=1\n"  # the old file's descriptor reads the old text only
    finally:
        reader.close()
    assert path.read_text() == "NEW=secret\n" and _mode(path) == 0o600


def test_a_symlink_in_place_of_the_file_is_replaced_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not yours\n")
    path = tmp_path / "secret.env"
    path.symlink_to(elsewhere)
    write_private(path, "S=1\n")
    assert elsewhere.read_text() == "not yours\n"
    assert not path.is_symlink() and path.read_text() == "S=1\n" and _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.txt", "secret.env"]  # no temporary left


def test_airflow_passwords_and_mlflow_auth_config_are_private(tmp_path):
    passwords = tmp_path / "airflow" / "passwords.json"
    write_passwords(str(passwords), {"operator": "s3cret-value"})
    assert json.loads(passwords.read_text()) == {"operator": "s3cret-value"} and _mode(passwords) == 0o600

    ini = tmp_path / "mlflow-auth.ini"
    write_config(str(ini), "postgresql+psycopg2://mlflow@127.0.0.1/mlflow_auth")
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read(ini)
    assert parsed["mlflow"]["default_permission"] == "READ"
    assert parsed["mlflow"]["database_uri"].endswith("/mlflow_auth") and _mode(ini) == 0o600


def test_each_airflow_user_needs_its_own_password_secret(tmp_path, monkeypatch):
    from include.deploy import airflow_passwords as ap

    path = tmp_path / "passwords.json"
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(path))
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,alice:user,bob:VIEWER")
    monkeypatch.setenv("AIRFLOW_ADMIN_PASSWORD", "a")
    monkeypatch.setenv("AIRFLOW_ALICE_PASSWORD", "b")
    monkeypatch.delenv("AIRFLOW_BOB_PASSWORD", raising=False)
    with pytest.raises(SystemExit, match="AIRFLOW_BOB_PASSWORD empty"):
        ap.main()
    assert not path.exists()
    monkeypatch.setenv("AIRFLOW_BOB_PASSWORD", "c")
    ap.main()
    assert json.loads(path.read_text()) == {"admin": "a", "alice": "b", "bob": "c"}
    for bad in ("Alice:user", "carol:superuser", "eve"):
        with pytest.raises(SystemExit, match="write name:role"):
            ap.users(bad)
    assert ap.users(ap.USERS) == {"admin": "admin", "operator": "op", "approver": "user", "viewer": "viewer"}
