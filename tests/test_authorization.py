"""Authorization (totpd/authorization.py): rights from who the caller is."""

from __future__ import annotations

import asyncio

from totpd.authorization import Authority, Caller, is_pam
from totpd.config import Config
from totpd.protocol import Request
from totpd.workers import Worker


def answers(config: Config, *questions) -> list[bool]:
    worker = Worker("nss", 1, 8)
    authority = Authority(config, worker)

    async def ask() -> list[bool]:
        return [await getattr(authority, name)(*args) for name, *args in questions]

    try:
        return asyncio.run(ask())
    finally:
        worker.close()


def test_root_and_polkits_any_are_administrators_an_ordinary_uid_is_not():
    assert answers(
        Config(),
        ("is_admin", Caller(1, 0, 0)),
        ("is_admin", Caller(1, 1000, 1000, granted="any")),
        ("is_admin", Caller(1, 0, 0, granted="own")),
        ("is_admin", Caller(1, 65534, 65534)),
    ) == [True, True, False, False]


def test_the_admin_group_makes_its_members_administrators():
    assert answers(Config(admin_group="nogroup"), ("is_admin", Caller(1, 65534, 65534))) == [True]
    assert answers(Config(admin_group="root"), ("is_admin", Caller(1, 65534, 65534))) == [False]


def status_of(user: str, user_uid: int | None = None) -> Request:
    return Request("status", {"user": user}, user_uid=user_uid)


def test_a_caller_is_itself_only_for_its_own_account_and_never_when_polkit_said_none():
    assert answers(
        Config(),
        ("is_self", Caller(1, 65534, 65534), status_of("nobody")),
        ("is_self", Caller(1, 65534, 65534), status_of("root")),
        ("is_self", Caller(1, 65534, 65534, granted="none"), status_of("nobody")),
        ("may_act_on", Caller(1, 65534, 65534), status_of("nobody"), False),
    ) == [True, False, False, False]


def test_whose_account_a_request_names_is_taken_from_the_identity_step():
    """The service's identity step resolved the name: no second NSS lookup, whatever the name says."""
    assert answers(
        Config(),
        ("is_self", Caller(1, 65534, 65534), status_of("root", user_uid=65534)),
        ("is_self", Caller(1, 65534, 65534), status_of("nobody", user_uid=-1)),
    ) == [True, False]


def test_only_root_on_the_socket_is_the_pam_module():
    assert is_pam(Caller(1, 0, 0))
    assert not is_pam(Caller(1, 0, 0, granted="any")) and not is_pam(Caller(1, 1000, 1000))
