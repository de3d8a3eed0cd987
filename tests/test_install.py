"""`make man`, `make install` and `make uninstall`, staged in DESTDIR.

The man pages are built from their scdoc sources and must render without a
warning from man or groff, and stay in step with the code: every configuration
key in totpd.conf(5), every totpctl subcommand in totpctl(8). The install is
staged (DESTDIR, PREFIX) and run from the staged tree with the system Python,
exactly as the installed wrappers would; uninstall must leave only the admin's
configuration. scdoc, man-db, groff and python3-pip come from TEST_APT_PACKAGES: if one
is missing these tests fail.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from totpd import config as config_module
from totpd.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
PAGES = {"totpd.8", "totpctl.8", "pam_totpd.8", "totpd.conf.5"}


@pytest.fixture(scope="module")
def man_pages(tmp_path_factory) -> Path:
    subprocess.run(["make", "-C", str(REPO), "man"], check=True, capture_output=True, timeout=120)
    return REPO / "docs" / "man"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_man_page_renders_without_warnings(man_pages: Path, page: str):
    path = man_pages / page
    shown = subprocess.run(["man", "--warnings", "-l", str(path)], capture_output=True, text=True,
                           env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"}, timeout=60)
    assert shown.returncode == 0 and not shown.stderr, f"{page}: {shown.stderr}"
    assert "NAME" in shown.stdout and page.split(".")[0] in shown.stdout
    groff = subprocess.run(["groff", "-man", "-ww", "-z", str(path)], capture_output=True, text=True, timeout=60)
    assert groff.returncode == 0 and not groff.stderr, f"{page}: {groff.stderr}"


def test_totpd_conf_5_documents_every_config_key():
    source = (REPO / "docs" / "man" / "totpd.conf.5.scd").read_text()
    missing = [key for key in config_module.known_keys() if f"*{key}*" not in source]
    assert not missing, f"docs/man/totpd.conf.5.scd lacks the keys {missing}"


def test_totpctl_8_documents_every_subcommand():
    source = (REPO / "docs" / "man" / "totpctl.8.scd").read_text()
    subparsers = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [name for name in subparsers.choices if f"\n*{name}*" not in source]
    assert not missing, f"docs/man/totpctl.8.scd lacks the subcommands {missing}"
    for flag in ("--config", "--json", "--root", "--sshd-config"):
        assert flag in source, f"totpctl(8) does not mention doctor's {flag}"


def test_make_install_and_uninstall_honour_destdir_and_prefix(tmp_path: Path):
    stage = tmp_path / "stage"
    make = ["make", "-C", str(REPO), f"DESTDIR={stage}", "PREFIX=/opt/totpd-test", "PAMDIR=/opt/totpd-test/security"]
    subprocess.run([*make, "install"], check=True, capture_output=True, timeout=600)
    root = stage / "opt" / "totpd-test"
    for path in ("bin/totpd", "bin/totpctl", "security/pam_totpd.so", "lib/totpd/site/totpd/daemon.py",
                 "lib/systemd/system/totpd.service", "lib/sysusers.d/totpd.conf",
                 "share/man/man8/totpctl.8", "share/man/man5/totpd.conf.5",
                 "share/doc/totpd/examples/pam.d/sudo"):
        assert (root / path).exists(), f"make install did not stage {path}"
    for path in ("etc/totpd/totpd.conf", "usr/share/pam-configs/totpd",
                 "usr/share/dbus-1/system.d/org.totpd.Totpd1.conf", "usr/share/polkit-1/actions/org.totpd.policy"):
        assert (stage / path).exists(), f"make install did not stage /{path}"
    wrapper = (root / "bin" / "totpctl").read_text()
    assert wrapper.startswith("#!/usr/bin/python3 -ISB\n") and '"/opt/totpd-test/lib/totpd/site"' in wrapper
    unit = (root / "lib/systemd/system/totpd.service").read_text()
    assert "ExecStart=/opt/totpd-test/bin/totpd --config /etc/totpd/totpd.conf" in unit

    # The staged tree runs on the system Python alone, as the wrapper would run it.
    site = root / "lib" / "totpd" / "site"
    for module in ("totpd.daemon", "totpd.cli"):
        run = subprocess.run(["/usr/bin/python3", "-ISB", "-c",
                              f"import sys; sys.path.insert(0, {str(site)!r}); from {module} import main; "
                              "sys.argv[0] = 'x'; sys.exit(main(['--version']))"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0 and "0." in run.stdout, run.stderr
    pycs = [p for p in site.rglob("*.pyc")]
    assert pycs, "byte-code is precompiled (the wrappers never write any)"

    subprocess.run([*make, "uninstall"], check=True, capture_output=True, timeout=120)
    left = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
    assert left == ["etc/totpd/totpd.conf"], f"make uninstall left {left}"
    subprocess.run(["rm", "-rf", "--one-file-system", str(stage)], check=True)
