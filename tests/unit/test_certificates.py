"""The node's DTLS certificate and its rotation (fake clock; the handshakes are in
tests/live/test_node_certificate.py)."""

from __future__ import annotations

import pytest

from relay.rtc.adapter import NodeCertificate
from relay.rtc.certificates import RotatingCertificate


def fingerprint(certificate: NodeCertificate) -> str:
    return certificate.getFingerprints()[0].value


def test_one_certificate_until_its_lifetime_then_a_fresh_one() -> None:
    now = [1000.0]
    rotating = RotatingCertificate(3600, clock=lambda: now[0])
    first = rotating.current()
    now[0] += 3599
    assert rotating.current() is first and rotating.rotations == 0
    now[0] += 1
    second = rotating.current()
    assert second is not first and fingerprint(second) != fingerprint(first)
    assert rotating.rotations == 1
    now[0] += 10
    assert rotating.current() is second


def test_fingerprints_are_computed_once() -> None:
    certificate = NodeCertificate.generateCertificate()
    assert [f.algorithm for f in certificate.getFingerprints()] == ["sha-256", "sha-384", "sha-512"]
    a, b = certificate.getFingerprints(), certificate.getFingerprints()
    assert a == b and a is not b  # a copy: a caller cannot change the node's list


def test_lifetime_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RotatingCertificate(0)
