"""Which python3-* packages the Debian run of the suite uses (`make check-debian`).

Prints each dependency's version and file, and fails unless every one is Debian's
own (/usr/lib/python3/dist-packages), so a copy from PyPI in the environment can
never stand in for the versions the package depends on.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

DEBIAN_SITE = "/usr/lib/python3/dist-packages/"
DISTRIBUTIONS = {"pyotp": "pyotp", "segno": "segno", "argon2": "argon2-cffi", "cryptography": "cryptography",
                 "dbus_fast": "dbus-fast", "psycopg": "psycopg", "psycopg_pool": "psycopg-pool", "pytest": "pytest"}


def main() -> int:
    foreign = []
    for module_name, distribution in DISTRIBUTIONS.items():
        module = importlib.import_module(module_name)
        version = importlib.metadata.version(distribution)
        print(f"{distribution:<14} {version:<10} {module.__file__}")
        if not module.__file__.startswith(DEBIAN_SITE):
            foreign.append(distribution)
    if foreign:
        print(f"not Debian's packages: {', '.join(foreign)} (expected under {DEBIAN_SITE})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
