"""RFC 9605 published vectors for the SFrame key schedule, header codec and AES-GCM suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voipclient.crypto import sframe

VECTORS = json.loads(
    (Path(__file__).parents[2] / "data" / "rfc9605-sframe-test-vectors.json").read_text()
)
GCM_CASES = [c for c in VECTORS["sframe"] if c["cipher_suite"] in (4, 5)]


def test_gcm_cases_exist() -> None:
    assert {c["cipher_suite"] for c in GCM_CASES} == {4, 5}


@pytest.mark.parametrize("case", VECTORS["header"], ids=lambda c: f"{c['kid']}-{c['ctr']}")
def test_header_encoding(case: dict[str, object]) -> None:
    assert sframe.encode_header(case["kid"], case["ctr"]).hex() == case["encoded"]


@pytest.mark.parametrize("case", GCM_CASES, ids=lambda c: f"suite{c['cipher_suite']}")
def test_gcm_suites_reproduce(case: dict[str, str]) -> None:
    suite = int(case["cipher_suite"])
    base = bytes.fromhex(case["base_key"])
    kid, ctr = int(case["kid"]), int(case["ctr"])
    key, salt = sframe.derive_key_salt(kid, base, suite)
    assert key.hex() == case["sframe_key"]
    assert salt.hex() == case["sframe_salt"]
    assert sframe.nonce(salt, ctr).hex() == case["nonce"]
    header = sframe.encode_header(kid, ctr)
    assert (header + bytes.fromhex(case["metadata"])).hex() == case["aad"]
    ct = sframe.encrypt(
        kid, ctr, base, bytes.fromhex(case["metadata"]), bytes.fromhex(case["pt"]), suite
    )
    assert ct.hex() == case["ct"]
