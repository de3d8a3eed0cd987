"""totpd/migrate.py: `totpctl migrate` copies every account between SQLite and PostgreSQL.

Real daemons on both sides (conftest's make_daemon; its default backend here is the
session's PostgreSQL, a fresh database each test) and the real totpctl in between.
"""

from __future__ import annotations

import json
import os

import pytest

import wire
from totpd.errors import MigrationRefused
from totpd.migrate import migrate
from totpd.sealing import Sealer, key_check, secret_context
from totpd.store import StoreOptions, Token, Transaction, open_store

from test_fleet import code, verify
from test_store import KEY, enroll


@pytest.fixture
def backend() -> str:
    return "postgres"


def test_migrate_to_postgresql_and_back_keeps_accounts_recovery_codes_and_replay_state(make_daemon, postgres, pg_database, tmp_path):
    dsn = postgres.dsn(pg_database)
    single = make_daemon(database=str(tmp_path / "single" / "totpd.db"), max_failures=3, backoff_after=3)
    alice = single.enroll_json("alice")
    assert wire.request(single.socket_path, "enroll", user="bob").status == "OK"  # pending only
    single.enroll("carol")
    for _ in range(3):
        verify(single, "carol", "000001")
    used = code(alice["secret"])
    assert verify(single, "alice", used).status == "ACCEPTED"
    assert verify(single, "alice", alice["recovery_codes"][0]).status == "ACCEPTED"
    single.stop()

    dry = single.ctl("migrate", "--to", dsn, "--config", single.config_path, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert "stop every totpd" in dry.stderr
    counts = json.loads(dry.stdout)
    assert counts["accounts"] == 3 and counts["active"] == 2 and counts["pending_only"] == 1
    assert counts["recovery_codes"] == 9 + 10 and counts["with_replay_state"] == 1 and counts["locked"] == 1
    assert counts["new"] == 3 and counts["written"] == 0
    assert postgres.sql("SELECT to_regclass('accounts')", dbname=pg_database) == [(None,)]  # nothing written

    done = single.ctl("migrate", "--to", dsn, "--config", single.config_path)
    assert done.returncode == 0, done.stderr
    assert "copied 3 accounts" in done.stdout

    fleet = make_daemon()  # the fleet's database, the same master key
    assert verify(fleet, "alice", used).status == "REJECTED"  # the used step came along
    assert verify(fleet, "alice", alice["recovery_codes"][0]).status == "REJECTED"
    assert verify(fleet, "alice", alice["recovery_codes"][1]).status == "ACCEPTED"
    assert verify(fleet, "carol", "123456").status == "LOCKED"
    assert json.loads(fleet.ctl("status", "bob", "--json").stdout)["pending"] is True
    later = code(alice["secret"], 1)
    assert verify(fleet, "alice", later).status == "ACCEPTED"

    again = single.ctl("migrate", "--to", dsn, "--config", single.config_path)
    assert again.returncode == 1 and "already exist" in again.stderr and "--force" in again.stderr
    forced = single.ctl("migrate", "--to", dsn, "--config", single.config_path, "--force")
    assert forced.returncode == 0, forced.stderr
    # Replacing never revives a code used in PostgreSQL meanwhile.
    assert verify(fleet, "alice", later).status == "REJECTED"
    assert verify(fleet, "alice", alice["recovery_codes"][1]).status == "REJECTED"
    fleet.stop()

    back = tmp_path / "back" / "totpd.db"
    returned = single.ctl("migrate", "--from", dsn, "--database", str(back), "--config", single.config_path, "--json")
    assert returned.returncode == 0, returned.stderr
    assert json.loads(returned.stdout)["written"] == 3
    assert oct(os.stat(back).st_mode & 0o777) == "0o600"
    home = make_daemon(database=str(back))
    assert verify(home, "alice", later).status == "REJECTED"
    assert verify(home, "alice", alice["recovery_codes"][1]).status == "REJECTED"
    assert verify(home, "alice", alice["recovery_codes"][2]).status == "ACCEPTED"
    assert verify(home, "carol", "123456").status == "LOCKED"


def test_migrate_refuses_a_store_sealed_with_another_key(make_daemon, postgres, pg_database, tmp_path):
    single = make_daemon(database=str(tmp_path / "single.db"), key_file=str(tmp_path / "own" / "master.key"))
    single.enroll("alice")
    single.stop()
    make_daemon().stop()  # the fleet database now carries the fleet key's mark
    refused = single.ctl("migrate", "--to", postgres.dsn(pg_database), "--config", single.config_path)
    assert refused.returncode == 1 and "master key does not open this database" in refused.stderr
    assert postgres.sql("SELECT count(*) FROM accounts", dbname=pg_database) == [(0,)]


def test_a_forced_copy_keeps_each_tokens_later_used_step_and_every_recovery_code_used_on_either_side(
    postgres, pg_database, tmp_path
):
    sealer = Sealer(KEY)
    single, fleet = str(tmp_path / "state" / "totpd.db"), postgres.dsn(pg_database)

    def alice(steps: dict[str, int], failures: int, used: tuple[int, ...] = ()):
        def write(tx: Transaction) -> None:
            enroll(tx, "alice")
            key = Token("key", "hotp", sealer.seal(b"k" * 20, secret_context("alice")), "SHA1", 6, 30, -1, 0, 2000.0, None)
            tx.add_token("alice", key)
            for name, step in steps.items():
                tx.advance_step("alice", name, step)
            tx.set_failures("alice", failures, 0.0, False)
            tx.replace_recovery_codes("alice", ["h0", "h1", "h2"])
            for code_id in used:
                tx.use_recovery_code("alice", code_id)

        return write

    for database, write in (
        (single, alice({"default": 10, "key": 3}, 1)),
        (fleet, alice({"default": 5, "key": 8}, 2, used=(1,))),  # the fleet's use since an earlier copy
    ):
        store = open_store(database, key_check(sealer), StoreOptions())
        store.run(write)
        store.close()
    with pytest.raises(MigrationRefused, match="already exist there"):
        migrate(single, fleet, sealer, StoreOptions())
    assert migrate(single, fleet, sealer, StoreOptions(), force=True).written == 1
    store = open_store(fleet, key_check(sealer), StoreOptions())
    try:
        copied, codes = store.run(lambda tx: (tx.get("alice"), tx.recovery_hashes("alice")))
    finally:
        store.close()
    assert {token.name: token.last_step for token in copied.tokens} == {"default": 10, "key": 8}
    assert copied.failures == 2 and codes == [(0, "h0"), (2, "h2")]
