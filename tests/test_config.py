"""The configuration (totpd/config.py): every key documented, bad ones named.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from totpd import config
from totpd.errors import ConfigError

# -- config -------------------------------------------------------------------------


def test_every_config_key_is_documented_with_its_default():
    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    defaults = config.Config()
    for key in config.known_keys():
        assert f"`{key}`" in doc, key
        assert hasattr(defaults, key)


@pytest.mark.parametrize(
    "text, message",
    [
        ('sockett = "/x"\n', "unknown key 'sockett'"),
        ("window = \"1\"\n", "key 'window' must be a whole number"),
        ("window = 11\n", "key 'window' must be a whole number from 0 to 10"),
        ("max_failures = 1000\n", "key 'max_failures'"),
        ("check_accounts = 1\n", "key 'check_accounts' must be true or false"),
        ("host_clock_accounts = 1\n", "key 'host_clock_accounts' must be 0 (off) or a whole number of accounts from 2"),
        ("host_clock_window = 10\n", "key 'host_clock_window' must be a whole number from 60 to 86400"),
        ('socket_mode = "999"\n', "key 'socket_mode'"),
        ('unenrolled = "maybe"\n', "key 'unenrolled' must be one of"),
        ("socket = \n", "not valid TOML"),
    ],
)
def test_a_bad_config_names_the_key_and_the_file(tmp_path, text, message):
    path = tmp_path / "totpd.conf"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        config.load(str(path))
    assert message in str(error.value) and str(path) in str(error.value)


def test_a_bad_config_stops_the_daemon_with_one_line(tmp_path):
    path = tmp_path / "totpd.conf"
    path.write_text("window = -1\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    result = subprocess.run([sys.executable, "-m", "totpd", "--config", str(path)], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "key 'window'" in result.stderr and str(path) in result.stderr
    missing = subprocess.run([sys.executable, "-m", "totpd", "--config", str(tmp_path / "nope.conf")], capture_output=True, text=True, env=env, timeout=30)
    assert missing.returncode == 1 and "cannot read the configuration" in missing.stderr
