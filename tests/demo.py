"""`make demo`: a real daemon on SQLite, an enrollment with its QR code, a real PAM login.

With a terminal, you scan the QR code with your phone and type its codes; without
one (CI, a pipe), the demo computes the codes itself. Nothing outside a temporary
directory is touched: the PAM service file comes from a private directory through
pam_start_confdir(), never from /etc/pam.d.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "helpers"), str(HERE.parent)]

import pyotp  # noqa: E402

import pamdriver  # noqa: E402
from daemonproc import REPO, DaemonProcess  # noqa: E402

ACCOUNT = "demo"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def main() -> int:
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    module = REPO / "pam" / "pam_totpd.so"
    if not module.exists():
        print(f"demo: {module} is missing; run `make` first", file=sys.stderr)
        return 1
    top = Path(tempfile.mkdtemp(prefix="totpd-demo-"))
    daemon = DaemonProcess(top / "daemon", check_accounts=False)
    try:
        say(f"Starting totpd (SQLite store and master key in {daemon.workdir / 'state'})")
        daemon.start()
        print(f"daemon listening on {daemon.socket_path}")

        say(f"Enrolling account '{ACCOUNT}' with totpctl")
        command = [sys.executable, "-m", "totpd.cli", "--socket", daemon.socket_path, "enroll", ACCOUNT]
        secret = None
        if interactive:
            print("Scan the QR code with an authenticator app, then type the code it shows.")
            subprocess.run(command, env=daemon.env, check=True)
        else:
            secret = pyotp.random_base32(32)
            first_code = pyotp.TOTP(secret).now()
            print(f"(no terminal: provisioning a generated secret and answering the prompt with {first_code})")
            result = subprocess.run(
                command + ["--secret-file", "-"], input=f"{secret}\n{first_code}\n", text=True, env=daemon.env,
                stdout=sys.stdout, stderr=sys.stderr,
            )
            print()
            if result.returncode != 0:
                return 1

        say("Logging in through real libpam with pam_totpd.so")
        confdir = str(top / "pam.d")
        stack = f"auth required {module} socket={daemon.socket_path} timeout=5"
        pamdriver.write_confdir(confdir, "totpd-demo", [stack])
        print(f"PAM service 'totpd-demo': {stack}")
        if interactive:
            print("Wait for the next code in your app (the one you confirmed with is spent).")
            code = getpass.getpass("Verification code: ")
        else:
            code = pyotp.TOTP(secret).at(time.time() + 30)  # the confirming code's step is spent
        result = pamdriver.authenticate("totpd-demo", ACCOUNT, confdir, code, rhost="192.0.2.10", tty="pts/0")
        for style, text in result.messages:
            print(f"  module says ({'prompt' if style <= 2 else 'message'}): {text!r}")
        print(f"pam_authenticate -> {result.name}")
        if result.retcode != pamdriver.PAM_SUCCESS:
            print(daemon.log()[-2000:], file=sys.stderr)
            return 1

        say("The same code again (replay) is refused")
        replay = pamdriver.authenticate("totpd-demo", ACCOUNT, confdir, code, rhost="192.0.2.10", tty="pts/1")
        print(f"pam_authenticate -> {replay.name}  {replay.errors}")
        if replay.retcode == pamdriver.PAM_SUCCESS:
            return 1

        say("Audit trail (no secret, no code)")
        for line in daemon.log().splitlines():
            if "audit" in line:
                print("  " + line)
        say("Done: the daemon stops and the temporary state is removed")
        return 0
    finally:
        daemon.stop()
        if not os.environ.get("TOTPD_DEMO_KEEP"):
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
