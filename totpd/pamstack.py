"""Read a PAM service's auth stack the way libpam does, and ask what it lets through.

Used by `totpctl doctor`. Two parts:

- parsing: /etc/pam.d syntax as Linux-PAM reads it (comments from the first `#`,
  backslash continuations, case-insensitive types and controls, a leading `-` on
  the type, `[value=action ...]` controls, `include` and `substack`, Debian's
  `@include`, module paths given by name or in full);
- evaluation: every module is a choice among the return values it can give, and
  the stack is walked with libpam's own rules (libpam/pam_dispatch.c: impression
  and status, ok/done/bad/die/ignore/reset, jumps counted at the same substack
  level, a substack's `done`/`die` ending only the substack). The result is every
  reachable (final verdict, what pam_totpd answered) pair, each with one example
  path, so the doctor can say "a login succeeds although pam_totpd refused the
  code" and show the modules that make it so.
"""

from __future__ import annotations

import dataclasses
import os
import sysconfig
from typing import Iterator

from .errors import StackError

MODULE_NAME = "pam_totpd.so"
MAX_INCLUDE_DEPTH = 8  # libpam's PAM_SUBSTACK_MAX_LEVEL is 16; real stacks use 2 or 3

# The return values the model distinguishes (names as in pam.conf(5)).
RETURN_VALUES = (
    "success", "open_err", "symbol_err", "service_err", "system_err", "buf_err", "perm_denied",
    "auth_err", "cred_insufficient", "authinfo_unavail", "user_unknown", "maxtries",
    "new_authtok_reqd", "acct_expired", "session_err", "cred_unavail", "cred_expired", "cred_err",
    "no_module_data", "conv_err", "authtok_err", "authtok_recover_err", "authtok_lock_busy",
    "authtok_disable_aging", "try_again", "ignore", "abort", "authtok_expired", "module_unknown",
    "bad_item", "conv_again", "incomplete",
)
ACTIONS = ("ignore", "ok", "done", "bad", "die", "reset")
MUST_FAIL = "perm_denied"  # PAM_MUST_FAIL_CODE

# What a module can answer. Unknown modules: anything an auth module commonly
# returns. pam_totpd: what its return-code table (docs/pam.md) allows.
GENERIC_RETURNS = ("success", "auth_err", "ignore", "user_unknown", "authinfo_unavail", "new_authtok_reqd")
KNOWN_RETURNS = {
    "pam_deny.so": ("auth_err",),
    "pam_permit.so": ("success",),
    MODULE_NAME: ("success", "ignore", "auth_err", "authinfo_unavail", "maxtries", "user_unknown"),
}
MISSING_MODULE_RETURNS = ("module_unknown",)  # libpam: a module that failed to load

_SIMPLE_CONTROLS = {
    "required": ({"success": "ok", "new_authtok_reqd": "ok", "ignore": "ignore"}, "bad"),
    "requisite": ({"success": "ok", "new_authtok_reqd": "ok", "ignore": "ignore"}, "die"),
    "optional": ({"success": "ok", "new_authtok_reqd": "ok"}, "ignore"),
    "sufficient": ({"success": "done", "new_authtok_reqd": "done"}, "ignore"),
}


@dataclasses.dataclass(frozen=True)
class Line:
    """One module line of a stack, with where it came from."""

    path: str  # the file as the host sees it (without --root)
    number: int
    type: str
    control: str  # as written
    actions: tuple[tuple[str, str], ...]  # (return value, action) for every value; action may be a number
    module: str
    args: tuple[str, ...]
    silent: bool  # `-type`: libpam does not log a failure to load the module
    level: int  # substack depth
    substack_header: bool = False
    broken: str = ""  # why libpam would make this line always fail

    @property
    def where(self) -> str:
        return f"{self.path}:{self.number}"

    @property
    def module_name(self) -> str:
        return os.path.basename(self.module)

    @property
    def is_totpd(self) -> bool:
        return self.module_name == MODULE_NAME

    def action(self, value: str) -> str:
        return dict(self.actions)[value]

    def describe(self) -> str:
        dash = "-" if self.silent else ""
        return f"{dash}{self.type} {self.control} {self.module_name} ({self.where})"


@dataclasses.dataclass
class Stack:
    """The flattened auth lines of a service, plus what was noticed on the way."""

    service: str
    path: str
    lines: list[Line]
    other_types: list[Line]  # pam_totpd lines of type account/session/password
    problems: list[tuple[str, str]]  # (where, what) e.g. a missing include


# -- parsing -------------------------------------------------------------------------


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each configuration line, as libpam assembles them.

    A `\\` at the end of a line (trailing blanks allowed) joins the next line with a
    space; a `#` starts a comment to the end of that line and also ends the logical
    line, even after a backslash (libpam's _pam_str_prepare).
    """
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.split("\n"), 1):
        if not pending:
            start = number
        body = raw.rstrip(" \t\r")
        continued = body.endswith("\\") and "#" not in raw
        if continued:
            body = body[:-1] + " "
        body = body.split("#", 1)[0]
        pending.append(body)
        if continued:
            continue
        joined = "".join(pending).strip()
        pending = []
        if joined:
            yield start, joined


def tokens(line: str) -> list[str]:
    """Split on blanks; `[...]` is one token (`\\]` inside it is a literal `]`)."""
    out: list[str] = []
    i = 0
    while i < len(line):
        if line[i] in " \t":
            i += 1
            continue
        if line[i] == "[":
            j = i + 1
            chars = []
            while j < len(line) and line[j] != "]":
                if line[j] == "\\" and j + 1 < len(line) and line[j + 1] == "]":
                    chars.append("]")
                    j += 2
                    continue
                chars.append(line[j])
                j += 1
            out.append("[" + "".join(chars) + "]")
            i = j + 1
            continue
        j = i
        while j < len(line) and line[j] not in " \t":
            j += 1
        out.append(line[i:j])
        i = j
    return out


def parse_control(control: str) -> tuple[tuple[str, str], ...]:
    """Every return value's action for a control word or a `[value=action ...]` control."""
    word = control.lower()
    if word in _SIMPLE_CONTROLS:
        explicit, default = _SIMPLE_CONTROLS[word]
        return tuple((value, explicit.get(value, default)) for value in RETURN_VALUES)
    if not (control.startswith("[") and control.endswith("]")):
        raise StackError(f"unknown control '{control}'")
    explicit: dict[str, str] = {}
    default = "bad"  # libpam: "by default the default is to treat as failure"
    for pair in control[1:-1].split():
        value, sep, action = pair.partition("=")
        value, action = value.lower(), action.lower()
        if not sep or not (action in ACTIONS or (action.isdigit() and int(action) > 0)):
            raise StackError(f"bad control entry '{pair}' in {control}")
        if value == "default":
            default = action
        elif value in RETURN_VALUES:
            explicit[value] = action
        else:
            raise StackError(f"unknown return value '{value}' in {control}")
    return tuple((value, explicit.get(value, default)) for value in RETURN_VALUES)


class Reader:
    """Reads service files below `root` ("/" on a live system)."""

    def __init__(self, root: str = "/", confdirs: tuple[str, ...] = ("/etc/pam.d", "/usr/lib/pam.d")) -> None:
        self.root = root
        self.confdirs = confdirs

    def host_path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/")) if self.root not in ("", "/") else path

    def find(self, name: str) -> str | None:
        """Where libpam would read the service or include `name` from (host path), if anywhere."""
        candidates = [name] if name.startswith("/") else [os.path.join(d, name) for d in self.confdirs]
        for candidate in candidates:
            if os.path.isfile(self.host_path(candidate)):
                return candidate
        return None

    def stack(self, service: str, kind: str = "auth") -> Stack:
        """The service's flattened lines of type `kind` (auth unless asked for session etc.)."""
        path = self.find(service)
        stack = Stack(service=service, path=path or "", lines=[], other_types=[], problems=[])
        if path is not None:
            self._read(path, stack, depth=0, level=0, only_type=kind)
        return stack

    def _read(self, path: str, stack: Stack, depth: int, level: int, only_type: str) -> None:
        with open(self.host_path(path), encoding="utf-8", errors="replace") as handle:
            text = handle.read()
        for number, line in logical_lines(text):
            words = tokens(line)
            if words[0].lower() == "@include":
                self._include(words[1] if len(words) > 1 else "", path, number, stack, depth, level, only_type,
                              "@include", None)
                continue
            raw_type = words[0]
            silent = raw_type.startswith("-")
            kind = raw_type.lstrip("-").lower()
            control = words[1] if len(words) > 1 else ""
            module = words[2] if len(words) > 2 else ""
            if kind != only_type:
                if kind in ("account", "session", "password") and os.path.basename(module) == MODULE_NAME:
                    stack.other_types.append(self._line(path, number, kind, control, module, words[3:], silent, level))
                if kind not in ("auth", "account", "session", "password"):
                    stack.problems.append((f"{path}:{number}", f"unknown module type '{raw_type}'"))
                continue
            if control.lower() in ("include", "substack"):
                self._include(module, path, number, stack, depth, level, only_type, control.lower(), control)
                continue
            stack.lines.append(self._line(path, number, kind, control, module, words[3:], silent, level))

    def _include(self, name: str, path: str, number: int, stack: Stack, depth: int, level: int,
                 only_type: str, how: str, control: str | None) -> None:
        where = f"{path}:{number}"
        target = self.find(name) if name else None
        if how == "substack":
            header = Line(path, number, only_type, control or how, tuple((v, "ignore") for v in RETURN_VALUES),
                          name, (), False, level, substack_header=True)
            stack.lines.append(header)
        if target is None or depth + 1 >= MAX_INCLUDE_DEPTH:
            why = f"{how} {name or '(no file named)'}: no such file" if target is None else f"{how} {name}: too deeply nested"
            stack.problems.append((where, why))
            # libpam installs a module that always fails in its place.
            stack.lines.append(Line(path, number, only_type, how, tuple((v, "bad") for v in RETURN_VALUES),
                                    name or how, (), False, level, broken=why))
            return
        self._read(target, stack, depth + 1, level + (1 if how == "substack" else 0), only_type)

    @staticmethod
    def _line(path: str, number: int, kind: str, control: str, module: str, args: list[str], silent: bool,
              level: int) -> Line:
        broken = ""
        try:
            actions = parse_control(control) if control else ()
        except StackError as exc:
            actions, broken = (), str(exc)
        if not control or not module:
            broken = broken or "no control or no module"
        if broken:
            actions = tuple((v, "bad") for v in RETURN_VALUES)
        return Line(path, number, kind, control, actions, module, tuple(args), silent, level, broken=broken)


# -- module files ----------------------------------------------------------------------


def module_dirs() -> list[str]:
    """Where libpam looks for a module named without a path (its DEFAULT_MODULE_PATH)."""
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs = []
    if arch:
        dirs += [f"/lib/{arch}/security", f"/usr/lib/{arch}/security"]
    return dirs + ["/lib/security", "/lib64/security", "/usr/lib/security", "/usr/lib64/security"]


def module_exists(reader: Reader, module: str) -> bool:
    if module.startswith("/"):
        return os.path.isfile(reader.host_path(module))
    return any(os.path.isfile(reader.host_path(os.path.join(d, module))) for d in module_dirs())


# -- evaluation ------------------------------------------------------------------------

# What pam_totpd answered along one path: a tuple of its return values, in order.
Outcome = tuple[bool, tuple[str, ...]]  # (login succeeds, pam_totpd's answers)
Step = tuple[int, str]  # (index of the line, the value it returned)


def outcomes(lines: list[Line], returns: dict[int, tuple[str, ...]]) -> dict[Outcome, list[Step]]:
    """Every reachable (verdict, pam_totpd answers) of the stack, each with one example path.

    `returns[i]` is what line i's module may return. The walk is libpam's
    _pam_dispatch_aux for pam_authenticate (no frozen chain), one branch per
    distinct action a module's possible values lead to.
    """
    results: dict[Outcome, list[Step]] = {}
    seen: set[tuple] = set()

    def finish(impression: str, status: str, totpd: tuple[str, ...], path: list[Step]) -> None:
        ok = status == "success" and impression == "positive"
        results.setdefault((ok, totpd), list(path))

    def skip_level(i: int, level: int) -> int:
        """The index after the current (sub)stack ends (decision made)."""
        while i + 1 < len(lines) and lines[i + 1].level >= level:
            i += 1
        return i + 1

    def walk(i: int, impression: str, status: str, subs: tuple, prev_level: int, totpd: tuple[str, ...],
             path: list[Step]) -> None:
        key = (i, impression, status, subs, prev_level, totpd)
        if key in seen:
            return
        seen.add(key)
        if i >= len(lines):
            finish(impression, status, totpd, path)
            return
        line = lines[i]
        level = line.level
        if prev_level < level:  # entering a substack: remember the state to reset to
            subs = subs[:level] + ((impression, status),) + subs[level + 1:] if len(subs) > level else \
                subs + ((impression, status),) * (level + 1 - len(subs))
        if line.substack_header:
            walk(i + 1, impression, status, subs, level, totpd, path)
            return
        values = returns.get(i, GENERIC_RETURNS)
        tried: set[tuple[str, bool]] = set()
        for value in values:
            action = line.action(value)
            shape = (action, value == "success", value == "ignore")
            if shape in tried and not line.is_totpd:
                continue
            tried.add(shape)
            step_path = path + [(i, value)]
            now_totpd = totpd + (value,) if line.is_totpd else totpd
            imp, st, nxt = impression, status, i + 1
            if action == "reset":
                imp, st = subs[level] if len(subs) > level else ("undef", MUST_FAIL)
            elif action in ("ok", "done"):
                if imp == "undef" or (imp == "positive" and st == "success"):
                    imp, st = "positive", value
                if imp == "positive" and action == "done":
                    nxt = skip_level(i, level)
            elif action in ("bad", "die"):
                if imp != "negative":
                    imp, st = "negative", (MUST_FAIL if value == "ignore" else value)
                if action == "die":
                    nxt = skip_level(i, level)
            elif action == "ignore":
                pass
            else:  # a jump over N modules at this level (a substack counts as one)
                jump, j = int(action), i
                while j + 1 < len(lines) and lines[j + 1].level >= level and jump > 0:
                    j += 1
                    while j + 1 < len(lines) and lines[j + 1].level > level:
                        j += 1
                    jump -= 1
                if jump:  # libpam: "bad jump in stack"
                    imp, st = "negative", MUST_FAIL
                nxt = j + 1
            walk(nxt, imp, st, subs, level, now_totpd, step_path)

    walk(0, "undef", MUST_FAIL, (("undef", MUST_FAIL),), 0, (), [])
    return results


# Modules that check a first factor (a password, a key, a token) in an auth stack.
FIRST_FACTOR_MODULES = (
    "pam_unix.so", "pam_sss.so", "pam_ldap.so", "pam_krb5.so", "pam_winbind.so", "pam_userdb.so",
    "pam_pwdfile.so", "pam_u2f.so", "pam_yubico.so", "pam_radius_auth.so", "pam_matrix.so",
)


def totpd_without_first_factor(lines: list[Line], returns: dict[int, tuple[str, ...]]) -> list[Step] | None:
    """A path on which pam_totpd runs although every first-factor module before it
    failed (or there is none), or None. enroll_at_login shows a new secret to whoever
    reaches pam_totpd, so a failed password must stop the stack before it: `required`
    does not (libpam runs the rest and fails at the end), `requisite` does."""
    first = next((i for i, line in enumerate(lines) if line.is_totpd), len(lines))
    failing = dict(returns)
    for i in range(first):
        if lines[i].module_name in FIRST_FACTOR_MODULES and not lines[i].broken and not lines[i].substack_header:
            failing[i] = ("auth_err",)
    for (_granted, answers), path in outcomes(lines, failing).items():
        if answers:
            return path
    return None


def explain(lines: list[Line], path: list[Step]) -> str:
    """A path as a person reads it: `pam_unix.so (…:3) success -> …`."""
    if not path:
        return "no module runs"
    return " -> ".join(f"{lines[i].module_name} ({lines[i].where}) {value}" for i, value in path)
