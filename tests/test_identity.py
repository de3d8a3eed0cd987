"""Identity (totpd/identity.py) on this host's real NSS, and on a private copy of /etc
in a mount namespace for renamed and deleted accounts; tests/e2e/test_one_identity.py
drives the folding directory service through libpam and sshd."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from totpd import identity  # noqa: E402
from totpd.workers import Worker  # noqa: E402


def test_a_known_name_is_its_accounts_canonical_name():
    assert identity.canonical("root") == "root"
    assert identity.canonical("nobody") == pwd.getpwuid(65534).pw_name


def test_an_unknown_or_unencodable_name_is_kept_as_given():
    assert identity.lookup("no-such-account-here") is None
    assert identity.canonical("no-such-account-here") == "no-such-account-here"
    assert identity.canonical("\udcff") == "\udcff"


def test_a_policy_list_resolves_and_says_whether_nss_knew_every_name():
    assert identity.canonical_names(("root", "nobody")) == (("root", pwd.getpwuid(65534).pw_name), True)
    assert identity.canonical_names(("root", "no-such-account-here")) == (("root", "no-such-account-here"), False)


def test_groups_come_from_nss():
    assert "root" in identity.groups_of("root")
    assert identity.groups_of("no-such-account-here") == frozenset()
    assert identity.in_group(0, 0, "root") and not identity.in_group(65534, 65534, "root")


# -- the memo of canonical names (identity.Names) -------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _names_with_counted_lookups(monkeypatch, **kwargs) -> tuple[identity.Names, list[str], Clock]:
    asked: list[str] = []
    real = identity.account

    def counted(name: str) -> tuple[str, int] | None:
        asked.append(name)
        return real(name)

    monkeypatch.setattr(identity, "account", counted)
    clock = Clock()
    return identity.Names(Worker("nss", 1, 8), clock=clock, **kwargs), asked, clock


def test_a_name_nss_resolved_is_kept_for_a_few_seconds_without_another_lookup(monkeypatch):
    names, asked, clock = _names_with_counted_lookups(monkeypatch, ttl=5.0)

    async def run() -> list[str]:
        first = await names.account("root")
        clock.now += 4.9
        second = await names.account("root")
        clock.now += 0.2  # 5.1 s after the lookup: asked again
        third = await names.account("root")
        return [first, second, third]

    assert asyncio.run(run()) == [("root", 0)] * 3
    assert asked == ["root", "root"]


def test_a_name_nss_did_not_know_is_asked_again_every_time(monkeypatch):
    names, asked, _ = _names_with_counted_lookups(monkeypatch)

    async def run() -> list[tuple[str, int] | None]:
        return [await names.account("no-such-account-here") for _ in range(3)]

    assert asyncio.run(run()) == [None] * 3
    assert asked == ["no-such-account-here"] * 3


def test_the_memo_keeps_a_bounded_number_of_names_dropping_the_oldest(monkeypatch):
    names, asked, _ = _names_with_counted_lookups(monkeypatch, kept=2)
    nobody = pwd.getpwuid(65534).pw_name

    async def run() -> None:
        for name in ("root", nobody, "daemon", nobody, "root"):
            await names.account(name)

    asyncio.run(run())
    assert asked == ["root", nobody, "daemon", "root"]  # root was the oldest when daemon came
    assert len(names._found) == 2


# -- renamed, deleted and created accounts, through Service.handle on real NSS --------
#
# The scenario runs this file as a script inside a private mount namespace, over a
# copy of /etc whose passwd it edits between requests (the host's is never touched):
# tvictim (uid 5001) is enrolled, talias is a second passwd name for the same uid.

SCENARIO_USERS = "tvictim:x:5001:5001::/nonexistent:/usr/sbin/nologin\ntalias:x:5001:5001::/nonexistent:/usr/sbin/nologin\n"


def test_renamed_deleted_and_created_accounts_inside_and_after_the_memos_lifetime(tmp_path):
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, __file__, str(tmp_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.splitlines()[-1])
    ttl = identity.NAMES_TTL
    assert seen == {
        "before": ["NEED_CODE", "tvictim"],  # talias is tvictim's uid: tvictim's enrollment
        # tvictim renamed tvictor (same uid): NSS now says talias is tvictor
        "renamed, nss": "tvictor",
        f"renamed, {ttl - 1:g} s later": ["NEED_CODE", "tvictim"],  # the name NSS gave a moment ago
        f"renamed, {ttl + 1:g} s later": ["DENIED", "tvictor"],  # tvictor has no enrollment
        "restored": ["NEED_CODE", "tvictim"],
        # talias deleted: NSS no longer knows it
        "deleted, nss": None,
        f"deleted, {ttl - 1:g} s later": ["NEED_CODE", "tvictim"],  # still tvictim's enrollment, and code
        f"deleted, {ttl + 1:g} s later": ["UNKNOWN_USER", "talias"],
        # a name NSS did not know, then created: found on the very next request
        "unknown": ["UNKNOWN_USER", "tnew"],
        "created at once": ["DENIED", "tnew"],
    }


async def _scenario(work: Path) -> dict[str, object]:
    """Inside the namespace: a real Service with check_accounts = true on real NSS."""
    from totpd import otp
    from totpd.audit import Audit
    from totpd.config import Config
    from totpd.protocol import Request
    from totpd.sealing import Sealer, key_check, load_key, secret_context
    from totpd.service import Caller, Service
    from totpd.store import StoreOptions, open_store

    etc = work / "etc"
    subprocess.run(["cp", "-a", "/etc", str(etc)], check=True)
    passwd = etc / "passwd"
    host_passwd = passwd.read_text()
    passwd.write_text(host_passwd + SCENARIO_USERS)
    subprocess.run(["mount", "--bind", str(etc), "/etc"], check=True)

    config = Config(database=str(work / "totpd.db"), key_file=str(work / "master.key"),
                    check_accounts=True, audit="stderr", dbus="off")
    sealer = Sealer(load_key(config.key_file, create=True))
    store = open_store(config.database, key_check(sealer), StoreOptions())

    def enroll(tx) -> None:
        tx.put_pending("tvictim", sealer.seal(otp.new_secret(), secret_context("tvictim")), "SHA1", 6, 30, 0.0)
        tx.activate_pending("tvictim", 0.0)

    store.run(enroll)
    service = Service(config, store, sealer, Audit("stderr"))
    clock = Clock()
    service.names = identity.Names(service.nss, clock=clock)  # the same memo, on a clock the test moves
    users: list[str] = []  # the name each request reached its handler with
    handler = service._handlers["check"]
    service._handlers["check"] = lambda request, caller, session: users.append(request.user) or handler(
        request, caller, session)
    root = Caller(pid=1, uid=0, gid=0)

    async def check(name: str) -> list[str]:
        reply = await service.handle(Request("check", {"user": name, "service": "sshd"}), root)
        return [reply.status, users[-1]]

    ttl = identity.NAMES_TTL
    seen: dict[str, object] = {}
    try:
        seen["before"] = await check("talias")
        passwd.write_text(host_passwd + SCENARIO_USERS.replace("tvictim", "tvictor"))
        seen["renamed, nss"] = identity.canonical("talias")
        clock.now += ttl - 1
        seen[f"renamed, {ttl - 1:g} s later"] = await check("talias")
        clock.now += 2
        seen[f"renamed, {ttl + 1:g} s later"] = await check("talias")
        passwd.write_text(host_passwd + SCENARIO_USERS)
        clock.now += ttl + 1
        seen["restored"] = await check("talias")
        passwd.write_text(host_passwd + SCENARIO_USERS.splitlines(keepends=True)[0])
        seen["deleted, nss"] = identity.lookup("talias")
        clock.now += ttl - 1
        seen[f"deleted, {ttl - 1:g} s later"] = await check("talias")
        clock.now += 2
        seen[f"deleted, {ttl + 1:g} s later"] = await check("talias")
        seen["unknown"] = await check("tnew")
        passwd.write_text(host_passwd + SCENARIO_USERS + "tnew:x:5002:5002::/nonexistent:/usr/sbin/nologin\n")
        seen["created at once"] = await check("tnew")
    finally:
        service.close()
        store.close()
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_scenario(Path(sys.argv[1])))))
