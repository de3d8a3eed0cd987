"""Reading and evaluating PAM stacks (totpd/pamstack.py), with the real libpam as the oracle.

- parsing: libpam's line syntax (continuations, comments, `[...]` controls, case,
  `-type`), includes and substacks, what libpam turns into a line that always fails;
- evaluation: for stacks of pam_permit, pam_deny and a real pam_totpd.so answering
  through a fake daemon, what `outcomes` predicts (login granted or not, and how
  often pam_totpd was asked) is what libpam does, for every combination of answers;
- a first factor that does not stop the stack before pam_totpd, and the explanation
  of a path.

The doctor's findings built on these (ids, messages) are tests/test_doctor.py's.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

from totpd import pamstack

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "pam"))

import pamdriver  # noqa: E402
from fakedaemon import FakeDaemon, reply  # noqa: E402


def _stack(tmp_path: Path, files: dict[str, str], service: str = "svc") -> pamstack.Stack:
    confdir = tmp_path / "pam.d"
    confdir.mkdir(exist_ok=True)
    for name, text in files.items():
        (confdir / name).write_text(text)
    return pamstack.Reader("/", (str(confdir),)).stack(service)


# -- parsing ---------------------------------------------------------------------------


def test_logical_lines_join_continuations_and_drop_comments_as_libpam_does():
    text = "auth required \\\n   pam_unix.so # a comment\n\n# auth sufficient pam_permit.so\n" \
           "auth required pam_a.so \\   \nnext\nauth # comment \\\nrequired pam_b.so\n"
    assert list(pamstack.logical_lines(text)) == [
        (1, "auth required     pam_unix.so"),
        (5, "auth required pam_a.so  next"),
        (7, "auth"),  # a `#` ends the logical line, even after a backslash
        (8, "required pam_b.so"),
    ]


def test_a_bracketed_control_is_one_token_with_escaped_brackets_kept():
    assert pamstack.tokens("auth  [success=1 default=ignore]\tpam_x.so a=\\]") == [
        "auth", "[success=1 default=ignore]", "pam_x.so", "a=\\]"]
    assert pamstack.tokens("auth [a=\\]b] pam_x.so") == ["auth", "[a=]b]", "pam_x.so"]


def test_simple_controls_and_bracketed_ones_give_every_return_value_an_action():
    required = dict(pamstack.parse_control("REQUIRED"))
    assert required["success"] == "ok" and required["ignore"] == "ignore" and required["auth_err"] == "bad"
    assert set(required) == set(pamstack.RETURN_VALUES)
    jumping = dict(pamstack.parse_control("[success=2 Default=Ignore]"))
    assert jumping["success"] == "2" and jumping["auth_err"] == "ignore"
    assert dict(pamstack.parse_control("[success=ok]"))["auth_err"] == "bad"  # libpam's default default


@pytest.mark.parametrize("control", ["mandatory", "[success=0]", "[success=maybe]", "[sucess=ok]", "[success]"])
def test_a_control_libpam_would_refuse_is_a_stack_error(control):
    with pytest.raises(pamstack.StackError):
        pamstack.parse_control(control)


def test_a_line_libpam_would_refuse_becomes_a_line_that_always_fails(tmp_path):
    stack = _stack(tmp_path, {"svc": "auth [success=ok bogus=die] pam_permit.so\nauth required\n"})
    assert [line.broken for line in stack.lines] == [
        "unknown return value 'bogus' in [success=ok bogus=die]", "no control or no module"]
    assert all(line.action(value) == "bad" for line in stack.lines for value in pamstack.RETURN_VALUES)


def test_includes_and_substacks_are_read_where_libpam_finds_them_and_keep_their_level(tmp_path):
    stack = _stack(tmp_path, {
        "svc": "@include common\n-AUTH Sufficient pam_totpd.so socket=/x\nauth substack sub\nauth include gone\n"
               "account required pam_totpd.so\nsession required pam_unix.so\nbogus required pam_unix.so\n",
        "common": "auth required pam_unix.so\npassword required pam_unix.so\n",
        "sub": "auth requisite pam_deny.so\n",
    })
    confdir = tmp_path / "pam.d"
    assert stack.path == str(confdir / "svc")
    assert [(line.module_name, line.level, line.substack_header) for line in stack.lines] == [
        ("pam_unix.so", 0, False), ("pam_totpd.so", 0, False), ("sub", 0, True), ("pam_deny.so", 1, False),
        ("gone", 0, False)]
    unix, totpd, _, deny, gone = stack.lines
    assert unix.where == f"{confdir / 'common'}:1"
    assert totpd.silent and totpd.type == "auth" and totpd.args == ("socket=/x",) and totpd.is_totpd
    assert totpd.describe() == f"-auth Sufficient pam_totpd.so ({confdir / 'svc'}:2)"
    assert deny.action("auth_err") == "die"
    assert gone.broken == "include gone: no such file"
    assert [line.type for line in stack.other_types] == ["account"]
    assert stack.problems == [(f"{confdir / 'svc'}:4", "include gone: no such file"),
                              (f"{confdir / 'svc'}:7", "unknown module type 'bogus'")]


def test_a_missing_service_has_no_path_and_no_lines(tmp_path):
    stack = _stack(tmp_path, {"other": "auth required pam_deny.so\n"})
    assert stack.path == "" and stack.lines == []


def test_includes_nested_too_deep_become_a_failing_line(tmp_path):
    files = {f"s{i}": f"auth include s{i + 1}\n" for i in range(pamstack.MAX_INCLUDE_DEPTH + 2)}
    stack = _stack(tmp_path, files, service="s0")
    assert [line.broken for line in stack.lines] == [f"include s{pamstack.MAX_INCLUDE_DEPTH}: too deeply nested"]


def test_a_module_is_found_by_full_path_below_the_root_or_by_name_in_libpams_directories(tmp_path):
    reader = pamstack.Reader(str(tmp_path))
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt" / "pam_x.so").write_bytes(b"")
    security = tmp_path / pamstack.module_dirs()[0].lstrip("/")
    security.mkdir(parents=True)
    (security / "pam_y.so").write_bytes(b"")
    assert pamstack.module_exists(reader, "/opt/pam_x.so") and pamstack.module_exists(reader, "pam_y.so")
    assert not pamstack.module_exists(reader, "pam_x.so") and not pamstack.module_exists(reader, "/opt/pam_y.so")


# -- evaluation, against libpam -----------------------------------------------------------

# Stacks whose `X` lines are each pam_permit.so or pam_deny.so in turn; {T} is pam_totpd
# on the fake daemon's socket, {d} the confdir (libpam looks for a relative include in
# /etc/pam.d whatever confdir it was given, so includes name their file in full).
STACKS = {
    "required_then_code": {"svc": "auth required X\nauth required {T}\n"},
    "sufficient_then_code": {"svc": "auth sufficient X\nauth required {T}\n"},
    "debian_common_auth": {"svc": "auth [success=1 default=ignore] X\nauth requisite pam_deny.so\n"
                                  "auth required pam_permit.so\nauth required {T}\n"},
    "jump_over_the_code": {"svc": "auth [success=2 default=ignore] X\nauth requisite pam_deny.so\n"
                                  "auth required {T}\nauth required pam_permit.so\n"},
    "bad_jump": {"svc": "auth [success=5 default=die] {T}\nauth required X\n"},
    "substack_done_ends_only_the_substack": {"svc": "auth substack {d}/sub\nauth required {T}\n",
                                             "sub": "auth sufficient X\nauth required X\n"},
    "substack_die": {"svc": "auth substack {d}/sub\nauth required {T}\n",
                     "sub": "auth requisite X\nauth required pam_permit.so\n"},
    "include_sufficient": {"svc": "auth include {d}/inc\nauth required {T}\n",
                           "inc": "auth sufficient X\nauth required X\n"},
    "optional_code": {"svc": "auth required X\nauth optional {T}\n"},
    "code_ignored_on_failure": {"svc": "auth [success=ok default=ignore] {T}\nauth required X\n"},
    "fail_open": {"svc": "auth [success=ok authinfo_unavail=ignore default=die] {T}\nauth required X\n"},
    "code_done": {"svc": "auth [success=done default=die] {T}\nauth required X\n"},
    "reset": {"svc": "auth required X\nauth [success=ok default=reset] {T}\nauth required pam_permit.so\n"},
    "only_ignores": {"svc": "auth [default=ignore] {T}\n"},
    "code_twice": {"svc": "auth required {T}\nauth [success=1 default=ignore] X\nauth required {T}\n"},
    "continued_line": {"svc": "auth required \\\n  X # a comment\nAUTH REQUISITE {T}\n"},
}
# pam_totpd's answer to `check`, and what the model says pam_totpd.so returns then.
ANSWERS = {"ACCEPTED": "success", "REJECTED": "auth_err", "IGNORE": "ignore", None: "authinfo_unavail"}
RETURN_OF = {"pam_permit.so": "success", "pam_deny.so": "auth_err"}


def _variants(files: dict[str, str]):
    """Each way to make every X line pam_permit.so or pam_deny.so."""
    count = sum(len(re.findall(r"\bX\b", text)) for text in files.values())
    for choice in itertools.product(("pam_permit.so", "pam_deny.so"), repeat=count):
        picks = iter(choice)
        yield {name: re.sub(r"\bX\b", lambda _match: next(picks), text) for name, text in files.items()}


@pytest.fixture(scope="module")
def pam_module() -> str:
    subprocess.run(["make", "-s", "-C", str(REPO / "pam"), "pam_totpd.so"], check=True)
    return str(REPO / "pam" / "pam_totpd.so")


@pytest.mark.parametrize("name", sorted(STACKS))
def test_what_outcomes_predicts_is_what_libpam_does_for_every_answer_of_every_module(tmp_path, pam_module, name):
    socket_path = str(tmp_path / "d.sock")
    daemons = {}
    for status in ANSWERS:
        if status is not None:
            daemons[status] = FakeDaemon(str(tmp_path / f"{status}.sock"), lambda _r, s=status: reply(s))
    try:
        for number, files in enumerate(_variants(STACKS[name])):
            for status, value in ANSWERS.items():
                confdir = tmp_path / f"v{number}{status}"
                path = daemons[status].path if status else socket_path
                module = f"{pam_module} socket={path} timeout=2"
                confdir.mkdir()
                for file, text in files.items():
                    (confdir / file).write_text(text.format(T=module, d=confdir))
                (confdir / "other").write_text("auth required pam_deny.so\n")
                stack = pamstack.Reader("/", (str(confdir),)).stack("svc")
                returns = {i: (value,) if line.is_totpd else (RETURN_OF[line.module_name],)
                           for i, line in enumerate(stack.lines) if not line.substack_header and not line.broken}
                [(granted, answers)] = pamstack.outcomes(stack.lines, returns)
                asked = len(daemons[status].received) if status else 0
                result = pamdriver.authenticate("svc", "alice", str(confdir))
                done = len(daemons[status].received) - asked if status else len(answers)
                assert (result.retcode == pamdriver.PAM_SUCCESS, done) == (granted, len(answers)), \
                    (files, status, result.name)
    finally:
        for daemon in daemons.values():
            daemon.stop()


def test_every_variant_of_a_stack_is_tried():
    assert list(_variants({"a": "auth required X\nauth sufficient X\n"})) == [
        {"a": f"auth required {one}\nauth sufficient {two}\n"}
        for one in ("pam_permit.so", "pam_deny.so") for two in ("pam_permit.so", "pam_deny.so")]


# -- what the doctor asks of it -----------------------------------------------------------


def test_a_required_password_does_not_keep_pam_totpd_from_running_but_a_requisite_one_does(tmp_path):
    def path_without_first_factor(control: str):
        stack = _stack(tmp_path, {"svc": f"auth {control} pam_unix.so\nauth required pam_totpd.so\n"})
        return pamstack.totpd_without_first_factor(stack.lines, {0: ("success", "auth_err"), 1: ("success",)})

    assert path_without_first_factor("required") == [(0, "auth_err"), (1, "success")]
    assert path_without_first_factor("requisite") is None


def test_a_path_is_explained_module_by_module_with_where_each_line_is(tmp_path):
    stack = _stack(tmp_path, {"svc": "auth sufficient pam_unix.so\nauth required pam_totpd.so\n"})
    results = pamstack.outcomes(stack.lines, {0: ("success",), 1: ("success",)})
    assert list(results) == [(True, ())]  # granted, pam_totpd never asked
    where = tmp_path / "pam.d" / "svc"
    assert pamstack.explain(stack.lines, results[(True, ())]) == f"pam_unix.so ({where}:1) success"
    assert pamstack.explain(stack.lines, []) == "no module runs"
