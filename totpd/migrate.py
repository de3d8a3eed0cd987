"""`totpctl migrate`: copy every account between a single-host SQLite store and PostgreSQL.

An offline admin operation: it opens the two stores directly (not through a daemon),
so every daemon using either must be stopped first, or what they write meanwhile is
lost. Each account moves with everything: sealed secret and parameters, a pending
enrollment, the last accepted time step (so no used code works again), failure
count, backoff and lock, and its recovery-code hashes. Secrets stay sealed; the
master key is needed only to prove that it opens both stores, so that the daemons
on the other side can open what arrives.

The target is written in one transaction: all or nothing. Accounts that already
exist there are refused (nothing written) unless `force`; a replaced account keeps
the later of the two last accepted steps, so replacing can never revive a code.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from .errors import BackendMissing, MigrationRefused, StoreAbsent, StoreError
from .sealing import Sealer
from .sealing import key_check, secret_context
from .store import Account, Store, StoreOptions, Transaction, check_backend, is_postgres, open_store

PAGE = 1000


@dataclasses.dataclass
class Report:
    source: str
    target: str
    accounts: int = 0
    active: int = 0
    pending_only: int = 0
    recovery_codes: int = 0
    with_replay_state: int = 0
    locked: int = 0
    new: int = 0
    existing: list[str] = dataclasses.field(default_factory=list)
    written: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["existing"] = len(self.existing)
        return out


Snapshot = list[tuple[Account, list[tuple[int, str]]]]


def _read_all(tx: Transaction) -> Snapshot:
    accounts: Snapshot = []
    offset = 0
    while True:
        page = tx.page(offset, PAGE)
        accounts += [(account, list(tx.recovery_hashes(account.user))) for account, _ in page]
        if len(page) < PAGE:
            return accounts
        offset += PAGE


def _checked(sealer: Sealer, write: bool) -> Callable[[Transaction], None]:
    """The daemon's own key check; in a dry run a store without a key mark stays unmarked."""
    check = key_check(sealer)

    def run(tx: Transaction) -> None:
        if not write and tx.get_meta("key_check") is None:
            return
        check(tx)

    return run


def _same_enrollment(one: Account, other: Account, sealer: Sealer) -> bool:
    """Do the two hold a token with the same secret?"""
    context = secret_context(one.user)
    theirs = {sealer.open(token.secret, context) for token in other.tokens}
    return any(sealer.open(token.secret, context) in theirs for token in one.tokens)


def _merge(
    source: Account, source_codes: list[tuple[int, str]], target: Account, target_codes: list[tuple[int, str]], sealer: Sealer
) -> tuple[Account, list[tuple[int, str]]]:
    """What --force writes over an existing account: the source's, never reviving a used code.

    For each token, the later last step of the token of that name always wins. When both sides hold the same enrollment (the same
    secret: an earlier migration, then use on both sides), a recovery code used on
    either side stays used and the stricter throttling state is kept.
    """
    theirs = {token.name: token.last_step for token in target.tokens}
    merged = source._replace(
        tokens=tuple(token._replace(last_step=max(token.last_step, theirs.get(token.name, -1))) for token in source.tokens)
    )
    if not _same_enrollment(source, target, sealer):
        return merged, source_codes
    still_unused = set(target_codes)
    merged = merged._replace(
        failures=max(source.failures, target.failures),
        locked_until=max(source.locked_until, target.locked_until),
        locked=source.locked or target.locked,
    )
    return merged, [code for code in source_codes if tuple(code) in still_unused]


def _name(database: str) -> str:
    if is_postgres(database):
        from .store.postgres import connection_settings, describe

        try:
            return describe(connection_settings(database, StoreOptions())[0])
        except StoreError:
            return "PostgreSQL"
    return database


def migrate(
    source: str,
    target: str,
    sealer: Sealer,
    options: StoreOptions,
    force: bool = False,
    dry_run: bool = False,
) -> Report:
    """Copy every account of `source` into `target` (each a SQLite path or a PostgreSQL DSN)."""
    report = Report(_name(source), _name(target), dry_run=dry_run)
    source_store = open_store(source, _checked(sealer, write=False), options, create=False)
    try:
        snapshot = source_store.run(_read_all)
    finally:
        source_store.close()
    for account, codes in snapshot:
        report.accounts += 1
        report.active += account.active
        report.pending_only += (not account.active) and account.pending_secret is not None
        report.recovery_codes += len(codes)
        report.with_replay_state += any(token.last_step >= 0 for token in account.tokens)
        report.locked += account.locked

    try:
        target_store: Store | None = open_store(target, _checked(sealer, write=not dry_run), options, create=not dry_run)
    except StoreAbsent:
        target_store = None  # a dry run against a store that does not exist yet: all new
    if target_store is None:
        report.new = report.accounts
        return report

    def write(tx: Transaction) -> None:
        present: dict[str, Account] = {}
        for account, _ in snapshot:
            existing = tx.get(account.user)
            if existing is not None:
                present[account.user] = existing
        report.existing = sorted(present)
        report.new = report.accounts - len(present)
        if dry_run or (present and not force):
            return
        report.written = 0  # from scratch: a store may run a unit more than once (Store)
        for account, codes in snapshot:
            before = present.get(account.user)
            if before is not None:
                account, codes = _merge(account, codes, before, tx.recovery_hashes(account.user), sealer)
            tx.restore(account, codes)
            report.written += 1

    try:
        target_store.run(write)
    finally:
        target_store.close()
    if report.existing and not force and not dry_run:
        shown = ", ".join(report.existing[:5]) + (", ..." if len(report.existing) > 5 else "")
        raise MigrationRefused(
            f"{report.target}: {len(report.existing)} of the accounts already exist there ({shown});"
            " nothing was written. Add --force to replace them"
        )
    return report


# -- totpctl migrate ---------------------------------------------------------------------

MIGRATE_TIMEOUT = 600.0  # seconds: a copy of many accounts is one long transaction


def run_cli(args) -> int:  # type: ignore[no-untyped-def]
    """`totpctl migrate`: (args from totpd.cli) -> exit status, with one line per problem."""
    import json
    import os
    import sys

    from . import config as config_module
    from .errors import ConfigError, SealingError, StoreUnavailable
    from .sealing import load_credential, load_key

    def fail(message: str, code: int) -> int:
        print(f"totpctl: {message}", file=sys.stderr)
        return code

    config = config_module.Config()
    if args.config or os.path.exists(config_module.DEFAULT_CONFIG_PATH):
        try:
            config = config_module.load(args.config or config_module.DEFAULT_CONFIG_PATH)
        except ConfigError as exc:
            return fail(str(exc), 2)
    postgres = args.to or args.from_
    if not is_postgres(postgres):
        return fail(f"'{postgres}' is not a PostgreSQL connection string (postgresql://... or host=... dbname=...)", 2)
    sqlite = args.database or (config.database if not is_postgres(config.database) else config_module.Config.database)
    source, target = (sqlite, postgres) if args.to else (postgres, sqlite)
    try:
        check_backend(postgres)
    except BackendMissing as exc:
        return fail(str(exc), 2)
    try:
        credential = config_module.environment_credential_path()
        if args.key_file:
            key = load_key(args.key_file, create=False)
        elif credential:
            key = load_credential(credential)
        else:
            key = load_key(config.key_file, create=False)
        options = StoreOptions(
            password_file=args.password_file or config.database_password_file, pool_size=1, timeout=MIGRATE_TIMEOUT
        )
        print("totpctl: migrate works on the stores directly: stop every totpd using either one first", file=sys.stderr)
        report = migrate(source, target, Sealer(key), options, force=args.force, dry_run=args.dry_run)
    except StoreAbsent as exc:
        return fail(f"{exc}: nothing to copy from there", 2)
    except (MigrationRefused, SealingError) as exc:
        return fail(str(exc), 1)
    except StoreUnavailable as exc:
        return fail(str(exc), 3)
    except StoreError as exc:
        return fail(str(exc), 2)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    print(f"{report.source} -> {report.target}")
    print(f"  accounts: {report.accounts} ({report.active} active, {report.pending_only} pending only),"
          f" {report.new} new to the target")
    print(f"  recovery-code hashes: {report.recovery_codes}; with a used step (replay state):"
          f" {report.with_replay_state}; locked: {report.locked}")
    if report.existing:
        fate = "replaced (keeping the later used step)" if args.force else "refused without --force"
        print(f"  already in the target: {len(report.existing)}, {fate}")
    if report.dry_run:
        would = report.accounts if args.force or not report.existing else 0
        print(f"  dry run: nothing written; would copy {would} accounts")
    else:
        print(f"  copied {report.written} accounts")
    return 0
