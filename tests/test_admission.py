"""Admission (totpd/admission.py): the caps both doors share, in total and per uid.

tests/dbus/test_dbusapi.py shows the socket and D-Bus holding places in one count.
"""

from __future__ import annotations

from totpd.admission import Admission


def test_a_uid_is_admitted_up_to_its_cap_and_again_once_a_place_is_released():
    admission = Admission(total=10, per_uid=2)
    assert [admission.admit(1000) for _ in range(3)] == [True, True, False]
    assert admission.admit(1001)  # another uid has places of its own
    admission.release(1000)
    assert admission.admit(1000) and not admission.admit(1000)


def test_root_is_held_only_by_the_total():
    admission = Admission(total=3, per_uid=1)
    assert [admission.admit(0) for _ in range(3)] == [True, True, True]
    assert not admission.admit(0) and not admission.admit(1000)


def test_the_total_caps_every_uid_together_and_a_refusal_takes_nothing():
    admission = Admission(total=2, per_uid=5)
    assert admission.admit(1000) and admission.admit(1001)
    assert not admission.admit(1002)
    admission.release(1001)
    assert admission.admit(1002)  # the refusal above held no place
    assert not admission.admit(1000)
