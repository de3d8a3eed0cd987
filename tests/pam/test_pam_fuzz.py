"""wire.c's parser under libFuzzer with ASan and UBSan (`make -C pam fuzz`), seeded
from docs/protocol.md's test vectors. Nothing skips: without clang and its
libFuzzer runtime (the Makefile's TEST_APT_PACKAGES) these tests fail."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_pam_protocol import VECTOR_3_CHECK_ALICE_SUDO, VECTOR_4_NEED_CODE, VECTOR_6_ENROLL, VECTOR_7_NEED_CODE_LINES

REPO = Path(__file__).resolve().parent.parent.parent
PAM_DIR = REPO / "pam"
FUZZ_SECONDS = 30


def fuzz(tmp_path, seconds: int, **make_vars: str) -> subprocess.CompletedProcess:
    variables = {"FUZZ_SECONDS": str(seconds), "FUZZ_WORK": str(tmp_path / "run"), **make_vars}
    return subprocess.run(["make", "-s", "-C", str(PAM_DIR), "fuzz",
                           *(f"{key}={value}" for key, value in variables.items())],
                          capture_output=True, text=True, timeout=seconds + 300)


def test_the_seed_corpus_is_the_protocol_documents_test_vectors(tmp_path):
    subprocess.run([sys.executable, str(PAM_DIR / "fuzz" / "seeds.py"), str(REPO / "docs" / "protocol.md"),
                    str(tmp_path)], check=True)
    seeds = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert seeds["vector-3"] == VECTOR_3_CHECK_ALICE_SUDO
    assert seeds["vector-4"] == VECTOR_4_NEED_CODE
    assert seeds["vector-4-payload"] == VECTOR_4_NEED_CODE[8:]
    assert seeds["vector-11"] == VECTOR_6_ENROLL  # numbered in order: vector 5 is six malformed frames
    assert seeds["vector-12"] == VECTOR_7_NEED_CODE_LINES
    assert len([name for name in seeds if not name.endswith("-payload")]) == 12  # 4 frames, 6 malformed, 2 enrollment


PLANTED = {
    "heap-buffer-overflow": "volatile uint8_t byte = data[size]; (void)byte;",
    "runtime error": "volatile int big = INT_MAX; big += (int)size; (void)big;",
}


@pytest.mark.parametrize("report", sorted(PLANTED))
def test_the_fuzz_run_fails_on_a_planted_bug(tmp_path, report):
    """The minute below proves something only if a finding would fail it."""
    source = tmp_path / "planted.c"
    source.write_text(textwrap.dedent("""
        #include <limits.h>
        #include <stdint.h>
        #include <string.h>
        #include "wire.h"
        int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
        {
            struct wire_reply reply;
            if (wire_parse_reply(data, size, &reply) && strcmp(reply.status, "NEED_CODE") == 0) {
                PLANTED
            }
            return 0;
        }
    """).replace("PLANTED", PLANTED[report]))
    result = fuzz(tmp_path, 30, FUZZ_SOURCE=str(source), FUZZ_BIN=str(tmp_path / "planted"))
    assert result.returncode != 0, result.stderr[-3000:]
    assert report in result.stderr, result.stderr[-3000:]


def test_libfuzzer_finds_nothing_in_the_wire_parser_for_half_a_minute(tmp_path):
    result = fuzz(tmp_path, FUZZ_SECONDS)
    assert result.returncode == 0, result.stderr[-6000:]
    runs = re.search(r"^Done (\d+) runs in (\d+) second", result.stderr, re.MULTILINE)
    assert runs, result.stderr[-3000:]
    assert int(runs.group(1)) > 100_000 and int(runs.group(2)) >= FUZZ_SECONDS, runs.group(0)
