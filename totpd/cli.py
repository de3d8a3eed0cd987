"""totpctl: enroll and manage accounts by talking to the daemon (never to the store).

Exit status: 0 done; 1 the daemon said no (wrong code, not enrolled, forbidden, ...);
2 bad usage or input; 3 the daemon could not be reached or answered garbage;
130 interrupted (Control-C). Every error is one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import json
import os
import re
import pwd
import sys
from typing import Any, NoReturn

from . import __version__
from .client import DEFAULT_SOCKET, Client
from .errors import ClientError, Refused
from .protocol import MAX_LIST_LIMIT, Reply

EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
EXIT_INTERRUPTED = 130  # Control-C, as a shell reports it (128 + SIGINT)


def _fail(message: str, code: int) -> NoReturn:
    print(f"totpctl: {message}", file=sys.stderr)
    sys.exit(code)


def _self_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        _fail(f"uid {os.getuid()} has no account name; name the account explicitly", EXIT_USAGE)


def _call(args: argparse.Namespace, verb: str, ok: tuple[str, ...] = ("OK",), **fields: Any) -> Reply:
    with Client(args.socket) as client:
        reply = client.call(verb, **fields)
    if reply.status not in ok:
        raise Refused(f"{verb} {fields.get('user', '')}".strip(), reply.status, reply.message)
    return reply


def _read_secret(path: str) -> str:
    try:
        if path == "-":
            text = sys.stdin.readline()
        else:
            with open(path, encoding="utf-8") as handle:
                text = handle.readline()
    except OSError as exc:
        _fail(f"{path}: cannot read the secret: {exc.strerror}", EXIT_USAGE)
    except UnicodeDecodeError:
        _fail(f"{path}: the secret file is not text", EXIT_USAGE)
    text = text.strip()
    if not text:
        _fail(f"{path}: no secret in the file (expected one base32 line)", EXIT_USAGE)
    return text


def _ask(prompt: str, secret_input: bool = True) -> str:
    """Read a code from the person (no echo on a terminal) or from a line of stdin."""
    if sys.stdin.isatty() and secret_input:
        try:
            return getpass.getpass(prompt).strip()
        except (EOFError, KeyboardInterrupt):
            return ""
    print(prompt, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip()
    print(file=sys.stderr)  # the newline a person would have typed
    return answer


def _grouped(secret: str) -> str:
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _write_private(path: str, writer: Any) -> None:
    """QR images carry the secret: a new file, 0600, never an existing one or a symlink
    (a user could have planted either where an administrator writes)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        _fail(f"{path}: already exists (or is a symlink); not overwritten: name a new file", EXIT_USAGE)
    except OSError as exc:
        _fail(f"{path}: cannot write: {exc.strerror}", EXIT_USAGE)
    with os.fdopen(fd, "wb") as handle:
        writer(handle)


def _qr_drawing() -> Any:
    """totpd.qr. Only drawing needs segno: every other path runs on the standard library alone."""
    try:
        from . import qr
    except ImportError as exc:
        if exc.name and not exc.name.startswith("segno"):
            raise
        _fail(f"drawing the QR code needs segno ({exc}): apt install python3-segno, or use --json", EXIT_USAGE)
    return qr


# -- commands ------------------------------------------------------------------------


def _colour_terminal() -> bool:
    """Whether the QR code may be drawn in its own colours: standard output is a terminal
    and NO_COLOR (no-color.org) is unset; elsewhere (a file, a pipe, a pager) the
    escapes would arrive as text, so two plain copies are drawn instead (totpd.qr)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def cmd_enroll(args: argparse.Namespace) -> int:
    return _new_token(args, "enroll")


def cmd_token_add(args: argparse.Namespace) -> int:
    return _new_token(args, "token_add")


def _new_token(args: argparse.Namespace, verb: str) -> int:
    """enroll (the account's first token, or with --force a replacement for all) and
    token add (one more): the QR code, then a first code unless --no-confirm."""
    user = args.user or _self_name()
    adding = verb == "token_add"
    if args.type == "totp" and args.counter is not None:
        _fail("--counter is for --type hotp", EXIT_USAGE)
    fields: dict[str, Any] = {
        "user": user, "algorithm": args.algorithm, "digits": args.digits, "period": args.period,
        "token": args.name, "type": args.type, "counter": args.counter or 0,
    }
    if args.issuer:
        fields["issuer"] = args.issuer
    if args.secret_file:
        fields["secret"] = _read_secret(args.secret_file)
    if not adding and args.force:
        fields["force"] = 1
    if (adding or args.force) and os.getuid() != 0:
        what = "an existing token" if adding else "the enrollment being replaced"
        fields["proof"] = _ask(f"Current code from {what}, or a recovery code: ")
    if args.no_confirm:
        fields["activate"] = 1
    qr = _qr_drawing() if not args.json or args.qr_png or args.qr_svg else None  # before anything is enrolled
    reply = _call(args, verb, **fields)
    uri, secret = reply.fields["uri"], reply.fields["secret"]
    if args.qr_png:
        _write_private(args.qr_png, lambda handle: handle.write(qr.png(uri)))
    if args.qr_svg:
        _write_private(args.qr_svg, lambda handle: handle.write(qr.svg(uri)))
    out = sys.stderr if args.json else sys.stdout
    if not args.json:
        colour = not args.qr_ascii and _colour_terminal()
        print("Scan this QR code with an authenticator app" if colour else qr.TWO_COPIES)
        print("(Google Authenticator, FreeOTP, Aegis, 1Password, Authy, ...):\n")
        drawing = qr.terminal_lines(uri) if colour else qr.ascii_lines(uri) if args.qr_ascii else qr.block_lines(uri)
        print("\n".join(drawing), end="\n\n")
        kind = "counter-based (HOTP)" if args.type == "hotp" else "time-based"
        print(f"Or add it by hand: account {user}, {kind} key:\n  {_grouped(secret)}")
        print(f"URI: {uri}\n")
    codes = reply.fields.get("recovery_codes", "")
    pending = reply.fields.get("pending") == "1"
    if pending:
        code = _ask("Enter the code the app shows now, to confirm: ")
        if not code:
            what = f"token {args.name} of {user}" if adding else f"the enrollment of {user}"
            print(f"Not confirmed: {what} stays pending (logins with it fail) until: totpctl confirm {user}", file=out)
            return EXIT_REFUSED
        codes = _call(args, "confirm", user=user, code=code).fields.get("recovery_codes", "")
        pending = False
    if args.json:
        result: dict[str, Any] = {"user": user, "token": args.name, "type": args.type, "uri": uri, "secret": secret, "pending": pending}
        if not adding:
            result["recovery_codes"] = codes.split()
        print(json.dumps(result))
    elif adding:
        print(f"Added token {args.name} to {user}.")
    else:
        _print_recovery_codes(user, codes)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    reply = _call(args, "token_list", user=args.user)
    tokens = json.loads(reply.fields.get("tokens", "[]"))
    if args.json:
        print(json.dumps(tokens))
        return 0
    print(f"{'NAME':<20} {'TYPE':<5} {'ALGORITHM':<9} {'DIGITS':>6} {'PERIOD/COUNTER':>14} {'SKEW':>4}  {'ADDED':<20} LAST USED")
    for token in tokens:
        where = str(token["counter"]) if token["type"] == "hotp" else f"{token['period']} s"
        skew = f"{token['skew']:+d}" if token["type"] == "totp" else "-"
        print(
            f"{token['name']:<20} {token['type']:<5} {token['algorithm']:<9} {token['digits']:>6} {where:>14} {skew:>4}"
            f"  {_when(str(token['added'])):<20} {_when(str(token['last_used']))}"
        )
    return 0


def cmd_resync(args: argparse.Namespace) -> int:
    fields: dict[str, Any] = {"user": args.user, "code": args.code1, "next_code": args.code2}
    if args.token:
        fields["token"] = args.token
    reply = _call(args, "resync", **fields)
    if args.json:
        print(json.dumps({"user": args.user, "token": reply.fields.get("token", "")}))
    else:
        print(f"Re-aligned token {reply.fields.get('token', '')} of {args.user}.")
    return 0


def cmd_token_remove(args: argparse.Namespace) -> int:
    _call(args, "token_remove", user=args.user, token=args.name)
    print(f"Removed token {args.name} of {args.user}.")
    return 0


def _print_recovery_codes(user: str, codes: str) -> None:
    print(f"Enrolled {user}. Recovery codes: each works once in place of a code.")
    print("Keep them somewhere safe; they are not shown again:")
    for code in codes.split():
        print(f"  {code}")


def cmd_confirm(args: argparse.Namespace) -> int:
    user = args.user or _self_name()
    code = args.code if args.code not in (None, "-") else _ask("Code from the app: ")
    codes = _call(args, "confirm", user=user, code=code).fields.get("recovery_codes", "")
    if args.json:
        print(json.dumps({"user": user, "recovery_codes": codes.split()}))
    else:
        _print_recovery_codes(user, codes)
    return 0


def _when(value: str) -> str:
    if not value or value == "0":
        return "-"
    return datetime.datetime.fromtimestamp(int(value), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _state(fields: dict[str, Any]) -> str:
    if str(fields.get("locked")) == "1":
        return "locked"
    if str(fields.get("locked_until", "0")) not in ("0", ""):
        return "backoff"
    if str(fields.get("enrolled")) == "1":
        return "active+pending" if str(fields.get("pending")) == "1" else "active"
    return "pending"


def cmd_status(args: argparse.Namespace) -> int:
    user = args.user or _self_name()
    fields = _call(args, "status", user=user).fields
    if args.json:
        print(json.dumps({"user": user, **_typed(fields)}))
        return 0
    print(f"account:         {user}")
    print(f"state:           {_state(fields)}")
    print(f"failures:        {fields.get('failures', '0')} consecutive")
    if fields.get("locked_until", "0") != "0":
        print(f"backoff until:   {_when(fields['locked_until'])}")
    print(f"recovery codes:  {fields.get('recovery_codes_left', '0')} left")
    print(f"token:           {fields.get('algorithm')}, {fields.get('digits')} digits, every {fields.get('period')} s")
    if int(fields.get("tokens", "0") or 0) > 1:
        print(f"tokens:          {fields['tokens']} (totpctl token list {user})")
    print(f"enrolled:        {_when(fields.get('created', ''))}")
    print(f"confirmed:       {_when(fields.get('confirmed', ''))}")
    if fields.get("sudo_graces", "0") not in ("0", ""):
        print(f"sudo grace:      {fields['sudo_graces']} session(s), the newest until {_when(fields['sudo_grace_until'])}")
    synced = fields.get("clock_synchronized", "unknown")
    clock_text = {"1": "synchronized", "0": "NOT synchronized: codes may be refused; start an NTP client"}
    print(f"host clock:      {clock_text.get(synced, 'unknown')}")
    if synced == "0":
        print("totpctl: warning: this host's clock is not synchronized", file=sys.stderr)
    return 0


def _typed(fields: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "message":
            continue
        out[key] = int(value) if value.isdigit() else (None if value == "" else value)
    for key in ("enrolled", "pending", "locked"):
        if key in out:
            out[key] = bool(out[key])
    return out


def cmd_list(args: argparse.Namespace) -> int:
    accounts: list[dict[str, Any]] = []
    offset = 0
    with Client(args.socket) as client:
        while True:
            reply = client.call("list", offset=offset, limit=MAX_LIST_LIMIT)
            if reply.status != "OK":
                raise Refused("list", reply.status, reply.message)
            page = json.loads(reply.fields.get("accounts", "[]"))
            accounts.extend(page)
            offset += len(page)
            if not page or offset >= int(reply.fields.get("total", "0")):
                break
    if args.json:
        print(json.dumps(accounts))
        return 0
    print(f"{'ACCOUNT':<24} {'STATE':<15} {'FAILURES':>8} {'RECOVERY':>8}  {'TOKEN':<16} CONFIRMED")
    for entry in accounts:
        token = f"{entry['algorithm']}/{entry['digits']}/{entry['period']}s"
        print(
            f"{entry['user']:<24} {_state(entry):<15} {entry['failures']:>8} {entry['recovery_codes_left']:>8}"
            f"  {token:<16} {_when(str(entry.get('confirmed') or ''))}"
        )
    print(f"{len(accounts)} account{'s' if len(accounts) != 1 else ''}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    _call(args, "reset", user=args.user)
    print(f"Reset {args.user}: the enrollment and its recovery codes are gone.")
    return 0


def cmd_unlock(args: argparse.Namespace) -> int:
    _call(args, "unlock", user=args.user)
    print(f"Unlocked {args.user}.")
    return 0


def cmd_recovery_codes(args: argparse.Namespace) -> int:
    user = args.user or _self_name()
    if not args.regenerate:
        fields = _call(args, "status", user=user).fields
        left = fields.get("recovery_codes_left", "0")
        if args.json:
            print(json.dumps({"user": user, "recovery_codes_left": int(left)}))
        else:
            print(f"{user} has {left} recovery codes left; new ones: totpctl recovery-codes {user} --regenerate")
        return 0
    fields: dict[str, Any] = {"user": user}
    if os.getuid() != 0:
        fields["proof"] = _ask("Current code or a recovery code: ")
    codes = _call(args, "recovery_codes", **fields).fields.get("recovery_codes", "")
    if args.json:
        print(json.dumps({"user": user, "recovery_codes": codes.split()}))
    else:
        print("The old recovery codes no longer work.")
        _print_recovery_codes(user, codes)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    code = args.code if args.code not in (None, "-") else _ask("Code: ")
    reply = _call(args, "verify", ok=("ACCEPTED",), user=args.user, code=code, service="totpctl")
    if args.json:
        print(json.dumps({"user": args.user, "accepted": True}))
    else:
        print(f"Accepted code for {args.user}.")
    if reply.message:
        print(reply.message, file=sys.stderr)
    return 0


IMPORT_BATCH = 256


def cmd_import(args: argparse.Namespace) -> int:
    from . import importers

    pskc_only = [flag for flag, value in (("--key-file", args.key_file), ("--password-file", args.password_file),
                                          ("--user-map", args.user_map)) if value is not None]
    if args.format != "pskc" and pskc_only:
        _fail(f"{pskc_only[0]} is for import pskc only", EXIT_USAGE)
    try:
        if args.format == "google-authenticator":
            if not args.user:
                _fail("import google-authenticator needs --user USER (whose file it is)", EXIT_USAGE)
            result = importers.google_authenticator(args.path, args.user)
        elif args.format == "oath":
            result = importers.oath(args.path, args.user)
        elif args.format == "pskc":
            result = _read_pskc(args)
        else:
            result = importers.tsv(args.path)
    except importers.ImportFileError as exc:
        _fail(str(exc), EXIT_USAGE)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)

    def place(account: Any) -> str:
        return f"{args.path}: key package {account.line}" if args.format == "pskc" else f"{args.path}:{account.line}"

    line_of = {account.user: place(account) for account in result.accounts}
    with Client(args.socket, timeout=600) as client:
        for start in range(0, len(result.accounts), IMPORT_BATCH):
            batch = result.accounts[start : start + IMPORT_BATCH]
            replies = client.pipeline([("import_add", _import_fields(account)) for account in batch])
            for account, reply in zip(batch, replies):
                if reply.status != "OK":
                    raise Refused(f"{place(account)}: {account.user}", reply.status, reply.message)
        reply = client.call("import_commit", force=int(args.force), dry_run=int(args.dry_run))
    if reply.status == "UNKNOWN_USER":
        unknown = json.loads(reply.fields.get("unknown_users", "[]"))
        where = ", ".join(f"{line_of.get(user, args.path)}: {user}" for user in unknown[:5])
        _fail(f"{reply.message} ({where})", EXIT_REFUSED)
    if reply.status != "OK":
        raise Refused(f"import {args.path}", reply.status, reply.message)
    counts = {key: int(reply.fields.get(key, "0")) for key in ("created", "replaced", "skipped")}
    skipped = json.loads(reply.fields.get("skipped_users", "[]"))
    if args.json:
        print(json.dumps({**counts, "dry_run": args.dry_run, "skipped_users": skipped}))
        return 0
    verb = "would import" if args.dry_run else "imported"
    print(f"{verb}: {counts['created']} new, {counts['replaced']} replaced, {counts['skipped']} already enrolled and kept")
    if skipped:
        more = f" and {counts['skipped'] - len(skipped)} more" if counts["skipped"] > len(skipped) else ""
        print(f"kept (use --force to replace): {', '.join(skipped[:20])}{more if len(skipped) <= 20 else ' ...'}")
    return 0


def _read_pskc(args: argparse.Namespace) -> Any:
    from . import pskc

    if args.user:
        _fail("import pskc takes its users from the file's UserId or --user-map, not --user", EXIT_USAGE)
    key = pskc.read_key_file(args.key_file) if args.key_file else None
    password = pskc.read_password_file(args.password_file) if args.password_file else None
    user_map = pskc.read_user_map(args.user_map) if args.user_map else None
    return pskc.pskc(args.path, key=key, password=password, user_map=user_map)


def cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import run_cli  # the one command that opens the stores itself (offline)

    return run_cli(args)


def _import_fields(account: Any) -> dict[str, object]:
    fields: dict[str, object] = {
        "user": account.user,
        "secret": account.secret,
        "algorithm": account.algorithm,
        "digits": account.digits,
        "period": account.period,
        "last_step": account.last_step,
        "token": account.token,
        "type": account.type,
        "counter": account.counter,
    }
    if account.recovery_codes is not None:
        fields["recovery_codes"] = " ".join(account.recovery_codes)
    return fields


def _token_name(text: str) -> str:
    if not re.fullmatch(r"[a-z0-9_.-]{1,32}", text):
        raise argparse.ArgumentTypeError("a token name is 1 to 32 of a-z, 0-9, '_', '.', '-'")
    return text


def _counter(text: str) -> int:
    if not re.fullmatch(r"\d{1,15}", text):
        raise argparse.ArgumentTypeError("the counter is a whole number, 0 or more")
    return int(text)


def _token_options(parser: argparse.ArgumentParser) -> None:
    """What enroll and token add take alike: the new token's name, type and parameters."""
    parser.add_argument("user", nargs="?", metavar="USER")
    parser.add_argument("--name", type=_token_name, default="default", help="the token's name in its account (default %(default)s)")
    parser.add_argument("--type", choices=("totp", "hotp"), default="totp", help="time-based (default) or counter-based")
    parser.add_argument("--counter", type=_counter, help="HOTP: the counter value the token shows next (default 0)")
    parser.add_argument("--issuer", help="issuer shown in the app (default: the daemon's, usually the host name)")
    parser.add_argument("--digits", type=int, choices=(6, 8), default=6)
    parser.add_argument("--algorithm", type=str.upper, choices=("SHA1", "SHA256", "SHA512"), default="SHA1")
    parser.add_argument("--period", type=int, default=30, help="TOTP: seconds per code (default 30)")
    parser.add_argument("--qr-png", metavar="FILE", help="also write the QR code as PNG (mode 0600)")
    parser.add_argument("--qr-svg", metavar="FILE", help="also write the QR code as SVG (mode 0600)")
    parser.add_argument(
        "--qr-ascii", action="store_true",
        help="draw the QR code in plain ASCII ('##' a module) for terminals without block characters: two copies, one for "
        "light and one for dark themes, about 90 columns and 90 lines. By default a terminal gets it black on white in its "
        "own colours, whatever its theme; NO_COLOR, a file or a pipe get two copies in block characters",
    )
    parser.add_argument("--no-confirm", action="store_true", help="activate at once, without a first code (provisioning)")
    parser.add_argument("--secret-file", metavar="PATH", help="provision this base32 secret (- for stdin) instead of a new one")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="totpctl", description="Enroll and manage TOTP second factors (talks to totpd).")
    parser.add_argument("--socket", default=os.environ.get("TOTPD_SOCKET", DEFAULT_SOCKET), help="daemon socket (default %(default)s)")
    parser.add_argument("--version", action="version", version=f"totpctl {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    enroll = sub.add_parser("enroll", parents=[common], help="enroll an account (your own when USER is left out)")
    _token_options(enroll)
    enroll.add_argument("--force", action="store_true", help="replace an existing enrollment (every token)")
    enroll.set_defaults(func=cmd_enroll)

    token = sub.add_parser("token", help="an account's tokens: add, list, remove")
    tokens = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    add = tokens.add_parser("add", parents=[common], help="add a token beside the account's others")
    _token_options(add)
    add.set_defaults(func=cmd_token_add)
    token_list = tokens.add_parser("list", parents=[common], help="list an account's tokens")
    token_list.add_argument("user", metavar="USER")
    token_list.set_defaults(func=cmd_token_list)
    remove = tokens.add_parser("remove", parents=[common], help="remove one token (the last one: use reset)")
    remove.add_argument("user", metavar="USER")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=cmd_token_remove)

    resync = sub.add_parser("resync", parents=[common], help="re-align a token from two consecutive codes")
    resync.add_argument("user", metavar="USER")
    resync.add_argument("code1", metavar="CODE1")
    resync.add_argument("code2", metavar="CODE2")
    resync.add_argument("--token", type=_token_name, metavar="NAME", help="the token (default: whichever the codes are from)")
    resync.set_defaults(func=cmd_resync)

    confirm = sub.add_parser("confirm", parents=[common], help="confirm a pending enrollment with a first code")
    confirm.add_argument("user", nargs="?", metavar="USER")
    confirm.add_argument(
        "code", nargs="?", metavar="CODE",
        help="the code (- or left out: asked for without echo, or read from stdin; a code in argv shows in ps)",
    )
    confirm.set_defaults(func=cmd_confirm)

    status = sub.add_parser("status", parents=[common], help="show an account's state")
    status.add_argument("user", nargs="?", metavar="USER")
    status.set_defaults(func=cmd_status)

    listing = sub.add_parser("list", parents=[common], help="list enrolled accounts")
    listing.set_defaults(func=cmd_list)

    reset = sub.add_parser("reset", parents=[common], help="remove an account's enrollment")
    reset.add_argument("user", metavar="USER")
    reset.set_defaults(func=cmd_reset)

    unlock = sub.add_parser("unlock", parents=[common], help="lift a lockout")
    unlock.add_argument("user", metavar="USER")
    unlock.set_defaults(func=cmd_unlock)

    codes = sub.add_parser("recovery-codes", parents=[common], help="count or regenerate recovery codes")
    codes.add_argument("user", nargs="?", metavar="USER")
    codes.add_argument("--regenerate", action="store_true", help="replace all recovery codes with new ones")
    codes.set_defaults(func=cmd_recovery_codes)

    imports = sub.add_parser(
        "import", parents=[common], help="import accounts from google-authenticator, pam_oath, a TSV file or a PSKC (RFC 6030) file"
    )
    imports.add_argument("format", choices=("google-authenticator", "oath", "tsv", "pskc"))
    imports.add_argument("path", metavar="PATH")
    imports.add_argument("--user", help="the account (google-authenticator: required; oath: only this entry)")
    pskc_key = imports.add_mutually_exclusive_group()
    pskc_key.add_argument("--key-file", metavar="PATH", help="pskc: the pre-shared AES key, in hexadecimal")
    pskc_key.add_argument("--password-file", metavar="PATH", help="pskc: the password the key is derived from (the first line)")
    imports.add_argument("--user-map", metavar="FILE", help="pskc: serial<TAB>user lines, the owner of each device (wins over UserId)")
    imports.add_argument("--dry-run", action="store_true", help="report what would change; write nothing")
    imports.add_argument("--force", action="store_true", help="replace accounts that are already enrolled")
    imports.set_defaults(func=cmd_import)

    migrate = sub.add_parser(
        "migrate", parents=[common], help="copy every account between this host's SQLite store and PostgreSQL (daemons stopped)"
    )
    direction = migrate.add_mutually_exclusive_group(required=True)
    direction.add_argument("--to", metavar="DSN", help="copy the SQLite store into this PostgreSQL database")
    direction.add_argument("--from", dest="from_", metavar="DSN", help="copy this PostgreSQL database into the SQLite store")
    migrate.add_argument("--database", metavar="PATH", help="the SQLite store (default: the config's, else /var/lib/totpd/totpd.db)")
    migrate.add_argument("--config", metavar="FILE", help="totpd's configuration (default /etc/totpd/totpd.conf, if present)")
    migrate.add_argument("--key-file", metavar="PATH", help="the master key (default: the config's key_file)")
    migrate.add_argument("--password-file", metavar="PATH", help="PostgreSQL password (default: database_password_file, or PGPASSFILE)")
    migrate.add_argument("--force", action="store_true", help="replace accounts that already exist in the target")
    migrate.add_argument("--dry-run", action="store_true", help="report counts; write nothing")
    migrate.set_defaults(func=cmd_migrate)

    verify = sub.add_parser("verify", parents=[common], help="check a code (counts as a login attempt)")
    verify.add_argument("user", metavar="USER")
    verify.add_argument(
        "code", nargs="?", metavar="CODE",
        help="the code (- or left out: asked for without echo, or read from stdin; a code in argv shows in ps)",
    )
    verify.set_defaults(func=cmd_verify)

    from .doctor import add_parser as add_doctor  # its own module: checks, exit codes, --help text

    add_doctor(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Refused as exc:
        _fail(str(exc), EXIT_REFUSED)
    except ClientError as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    except BrokenPipeError:
        return EXIT_REFUSED
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
