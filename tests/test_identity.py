"""Identity (totpd/identity.py) on this host's real NSS; tests/e2e/test_one_identity.py
drives the folding directory service through libpam and sshd."""

from __future__ import annotations

import pwd

from totpd import identity


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
