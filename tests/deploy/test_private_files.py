"""Files holding secrets are written 0600 from the first byte, by one helper."""

from __future__ import annotations

import configparser
import json
import os
import stat

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


def test_airflow_passwords_and_mlflow_auth_config_are_private(tmp_path):
    passwords = tmp_path / "airflow" / "passwords.json"
    write_passwords(str(passwords), "s3cret-value", user="operator")
    assert json.loads(passwords.read_text()) == {"operator": "s3cret-value"} and _mode(passwords) == 0o600

    ini = tmp_path / "mlflow-auth.ini"
    write_config(str(ini), "postgresql+psycopg2://mlflow@127.0.0.1/mlflow_auth")
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read(ini)
    assert parsed["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert parsed["mlflow"]["database_uri"].endswith("/mlflow_auth") and _mode(ini) == 0o600
