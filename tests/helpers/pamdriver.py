"""A small ctypes driver for the real libpam: one authentication transaction.

Independent of pytest so benchmarks can reuse it. It calls
`pam_start_confdir()` (Linux-PAM >= 1.5.2) so the service file comes from a
private directory and /etc/pam.d is never touched; `write_confdir()` writes that
directory, with a deny-all `other` service beside it.

In process:   authenticate(service, user, confdir, answer="123456")
Isolated:     run_isolated(...)  -- the same in a fresh `python3 pamdriver.py`
              subprocess (crash isolation, LD_PRELOAD of sanitizer runtimes).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import subprocess
import sys
from typing import Iterable, Sequence

PAM_SUCCESS = 0
PAM_SYSTEM_ERR = 4
PAM_BUF_ERR = 5
PAM_PERM_DENIED = 6
PAM_AUTH_ERR = 7
PAM_AUTHINFO_UNAVAIL = 9
PAM_USER_UNKNOWN = 10
PAM_MAXTRIES = 11
PAM_CONV_ERR = 19
PAM_IGNORE = 25

PAM_SERVICE = 1
PAM_USER = 2
PAM_TTY = 3
PAM_RHOST = 4

PAM_PROMPT_ECHO_OFF = 1
PAM_PROMPT_ECHO_ON = 2
PAM_ERROR_MSG = 3
PAM_TEXT_INFO = 4

PAM_SILENT = 0x8000

NAMES = {
    PAM_SUCCESS: "PAM_SUCCESS",
    PAM_SYSTEM_ERR: "PAM_SYSTEM_ERR",
    PAM_BUF_ERR: "PAM_BUF_ERR",
    PAM_PERM_DENIED: "PAM_PERM_DENIED",
    PAM_AUTH_ERR: "PAM_AUTH_ERR",
    PAM_AUTHINFO_UNAVAIL: "PAM_AUTHINFO_UNAVAIL",
    PAM_USER_UNKNOWN: "PAM_USER_UNKNOWN",
    PAM_MAXTRIES: "PAM_MAXTRIES",
    PAM_CONV_ERR: "PAM_CONV_ERR",
    PAM_IGNORE: "PAM_IGNORE",
}


class _PamMessage(ctypes.Structure):
    _fields_ = [("msg_style", ctypes.c_int), ("msg", ctypes.c_char_p)]


class _PamResponse(ctypes.Structure):
    _fields_ = [("resp", ctypes.c_void_p), ("resp_retcode", ctypes.c_int)]


_CONV_FUNC = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(ctypes.POINTER(_PamMessage)),
    ctypes.POINTER(ctypes.POINTER(_PamResponse)),
    ctypes.c_void_p,
)


class _PamConv(ctypes.Structure):
    _fields_ = [("conv", _CONV_FUNC), ("appdata_ptr", ctypes.c_void_p)]


_libpam = ctypes.CDLL("libpam.so.0")
_libc = ctypes.CDLL(None)
_libc.calloc.restype = ctypes.c_void_p
_libc.calloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
_libc.strdup.restype = ctypes.c_void_p
_libc.strdup.argtypes = [ctypes.c_char_p]
_libc.free.argtypes = [ctypes.c_void_p]

_libpam.pam_start_confdir.restype = ctypes.c_int
_libpam.pam_start_confdir.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.POINTER(_PamConv),
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_void_p),
]
_libpam.pam_set_item.restype = ctypes.c_int
_libpam.pam_set_item.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
_libpam.pam_authenticate.restype = ctypes.c_int
_libpam.pam_authenticate.argtypes = [ctypes.c_void_p, ctypes.c_int]
_libpam.pam_end.restype = ctypes.c_int
_libpam.pam_end.argtypes = [ctypes.c_void_p, ctypes.c_int]


@dataclasses.dataclass
class Result:
    retcode: int
    messages: list[tuple[int, str]]  # (style, text) in the order the module sent them
    stderr: str = ""  # only from run_isolated

    @property
    def name(self) -> str:
        return NAMES.get(self.retcode, str(self.retcode))

    @property
    def prompts(self) -> list[str]:
        return [text for style, text in self.messages if style in (PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON)]

    @property
    def errors(self) -> list[str]:
        return [text for style, text in self.messages if style == PAM_ERROR_MSG]

    @property
    def infos(self) -> list[str]:
        return [text for style, text in self.messages if style == PAM_TEXT_INFO]


def write_confdir(confdir: str, service: str, stack: str | Iterable[str]) -> str:
    """Write `service` (lines of a PAM service file) and a deny-all `other` into confdir."""
    os.makedirs(confdir, exist_ok=True)
    if not isinstance(stack, str):
        stack = "\n".join(stack)
    with open(os.path.join(confdir, service), "w", encoding="utf-8") as f:
        f.write(stack.rstrip("\n") + "\n")
    with open(os.path.join(confdir, "other"), "w", encoding="utf-8") as f:
        f.write("auth required pam_deny.so\naccount required pam_deny.so\n"
                "password required pam_deny.so\nsession required pam_deny.so\n")
    return confdir


def authenticate(
    service: str,
    user: str,
    confdir: str,
    answer: str | Sequence[str] | None = None,
    *,
    rhost: str | None = None,
    tty: str | None = None,
    flags: int = 0,
) -> Result:
    """Run pam_authenticate once. `answer` replies to each echo-off/on prompt in
    turn (a str answers every prompt, a callable is asked with each prompt's text
    and answers it, or None to fail); None makes the conversation fail."""
    messages: list[tuple[int, str]] = []
    respond = answer if callable(answer) else None
    answers = [answer] if isinstance(answer, str) else [] if respond else list(answer or [])
    repeat = isinstance(answer, str)

    def conv(n, msgs, resp_out, _appdata):
        responses = _libc.calloc(n, ctypes.sizeof(_PamResponse))
        if not responses:
            return PAM_BUF_ERR
        array = ctypes.cast(responses, ctypes.POINTER(_PamResponse))
        for i in range(n):
            msg = msgs[i].contents
            text = (msg.msg or b"").decode("utf-8", "surrogateescape")
            messages.append((msg.msg_style, text))
            if msg.msg_style in (PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON) and respond is not None:
                reply = respond(text)
                if reply is None:
                    _libc.free(ctypes.c_void_p(responses))
                    return PAM_CONV_ERR
                array[i].resp = _libc.strdup(reply.encode("utf-8", "surrogateescape"))
                array[i].resp_retcode = 0
            elif msg.msg_style in (PAM_PROMPT_ECHO_OFF, PAM_PROMPT_ECHO_ON):
                if not answers:
                    # libpam frees what we allocated so far (calloc'ed: NULL resps are fine)
                    _libc.free(ctypes.c_void_p(responses))
                    return PAM_CONV_ERR
                reply = answers[0] if repeat else answers.pop(0)
                array[i].resp = _libc.strdup(reply.encode("utf-8", "surrogateescape"))
                array[i].resp_retcode = 0
        resp_out[0] = array
        return PAM_SUCCESS

    conv_func = _CONV_FUNC(conv)
    pam_conv = _PamConv(conv_func, None)
    handle = ctypes.c_void_p()
    ret = _libpam.pam_start_confdir(
        service.encode(), user.encode("utf-8", "surrogateescape"), ctypes.byref(pam_conv),
        confdir.encode(), ctypes.byref(handle),
    )
    if ret != PAM_SUCCESS:
        raise RuntimeError(f"pam_start_confdir failed: {NAMES.get(ret, ret)}")
    try:
        for item, value in ((PAM_RHOST, rhost), (PAM_TTY, tty)):
            if value is not None:
                raw = ctypes.c_char_p(value.encode("utf-8", "surrogateescape"))
                if _libpam.pam_set_item(handle, item, ctypes.cast(raw, ctypes.c_void_p)) != PAM_SUCCESS:
                    raise RuntimeError(f"pam_set_item({item}) failed")
        ret = _libpam.pam_authenticate(handle, flags)
    finally:
        _libpam.pam_end(handle, ret)
    return Result(ret, messages)


def run_isolated(
    service: str,
    user: str,
    confdir: str,
    answer: str | Sequence[str] | None = None,
    *,
    rhost: str | None = None,
    tty: str | None = None,
    flags: int = 0,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> Result:
    """authenticate() in a fresh subprocess; a crash there is reported, not fatal."""
    request = {"service": service, "user": user, "confdir": confdir, "answer": answer,
               "rhost": rhost, "tty": tty, "flags": flags}
    return run_isolated_batch([request], env=env, timeout=timeout)[0]


def run_isolated_batch(
    requests: list[dict], *, env: dict[str, str] | None = None, timeout: float = 300
) -> list[Result]:
    """Several transactions (dicts of authenticate()'s arguments) in one fresh
    subprocess; each Result carries the subprocess's whole stderr."""
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)],
        input=json.dumps(requests), capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"pamdriver subprocess exited {proc.returncode}: {proc.stderr[-4000:]}")
    return [Result(out["retcode"], [tuple(m) for m in out["messages"]], proc.stderr)
            for out in json.loads(lines[-1])]


def _main() -> int:
    results = []
    for request in json.loads(sys.stdin.read()):
        result = authenticate(
            request["service"], request["user"], request["confdir"], request.get("answer"),
            rhost=request.get("rhost"), tty=request.get("tty"), flags=request.get("flags", 0),
        )
        results.append({"retcode": result.retcode, "messages": result.messages})
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
