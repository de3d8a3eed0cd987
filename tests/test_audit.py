"""totpd/audit.py: one line per decision, every value one token a hostile name cannot break."""

from __future__ import annotations

import asyncio
import logging

import pytest

from totpd.audit import Audit, quote


@pytest.fixture(autouse=True)
def info(caplog):
    """The daemon's default log level, restored after each test."""
    caplog.set_level(logging.INFO, logger="totpd")


@pytest.mark.parametrize("value", ["alice", "svc-backup_2", "alice@EXAMPLE.COM", "192.0.2.1", "2001:db8::1", "0"])
def test_a_plain_value_is_written_as_it_is(value):
    assert quote(value) == value


@pytest.mark.parametrize(
    "value, expected",
    [
        ("two words", '"two words"'),
        ('a"b', '"a\\"b"'),
        ("EXAMPLE\\alice", '"EXAMPLE\\\\alice"'),
        ("x\nevent=verify result=accepted", '"x\\nevent=verify result=accepted"'),
        ("tab\there", '"tab\\there"'),
        ("é", '"\\xe9"'),
        ("", '""'),
    ],
)
def test_anything_else_is_quoted_with_every_control_character_escaped(value, expected):
    assert quote(value) == expected


def test_a_hostile_account_name_cannot_forge_a_line_or_a_field(capsys):
    Audit("stderr").record("verify", "rejected", user='eve result=accepted\naudit event=verify user=root result=accepted')
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0] == (
        'totpd: INFO: audit event=verify user="eve result=accepted\\naudit event=verify user=root result=accepted"'
        " result=rejected"
    )


def test_a_line_names_the_event_then_each_given_field_in_order_and_leaves_out_empty_ones(capsys):
    audit = Audit("stderr")
    audit.record("check", "need_code", user="root", given="ROOT", service="sshd", rhost="192.0.2.7", uid=0)
    audit.record("reset", "ok", user="alice", uid=1000, level="warning", detail="by admin")
    assert capsys.readouterr().err.splitlines() == [
        "totpd: INFO: audit event=check user=root given=ROOT service=sshd rhost=192.0.2.7 uid=0 result=need_code",
        'totpd: WARNING: audit event=reset user=alice uid=1000 result=ok detail="by admin"',
    ]


def test_lines_below_the_log_level_are_not_written(capsys):
    logging.getLogger("totpd").setLevel(logging.WARNING)
    try:
        audit = Audit("stderr")
        audit.record("check", "need_code", user="root")
        audit.record("verify", "locked", user="root", level="warning")
    finally:
        assert capsys.readouterr().err.splitlines() == ["totpd: WARNING: audit event=verify user=root result=locked"]


def test_inside_the_event_loop_a_turns_lines_go_out_together_at_its_end(capsys):
    audit = Audit("stderr")

    async def turn() -> tuple[str, str]:
        audit.record("check", "need_code", user="a")
        audit.record("check", "need_code", user="b")
        during = capsys.readouterr().err
        await asyncio.sleep(0)
        return during, capsys.readouterr().err

    during, after = asyncio.run(turn())
    assert during == ""
    assert after.splitlines() == [
        "totpd: INFO: audit event=check user=a result=need_code",
        "totpd: INFO: audit event=check user=b result=need_code",
    ]
