"""The self-check passes, catches a broken vector, and ships the same vectors the tests use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voipclient import selfcheck

DATA = Path(__file__).parents[1] / "data"
PACKAGED = Path(selfcheck.__file__).parent / "data"


def test_all_checks_pass() -> None:
    lines: list[str] = []
    assert selfcheck.run(lines.append)
    assert len(lines) == len(selfcheck.CHECKS)
    assert all(line.startswith("ok ") for line in lines)


@pytest.mark.parametrize(
    "name", ["vc1-datagram-vectors.json", "libsignal-fingerprint.json", "vc1-privacy-code.json"]
)
def test_packaged_vectors_equal_the_test_copies(name: str) -> None:
    assert json.loads((PACKAGED / name).read_text()) == json.loads((DATA / name).read_text())


def test_packaged_sframe_cases_are_the_gcm_cases() -> None:
    full = json.loads((DATA / "rfc9605-sframe-test-vectors.json").read_text())["sframe"]
    packaged = json.loads((PACKAGED / "rfc9605-sframe-gcm-vectors.json").read_text())["sframe"]
    assert packaged == [c for c in full if c["cipher_suite"] in (4, 5)]


def test_a_failing_check_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> str:
        raise AssertionError("vector differs")

    monkeypatch.setattr(selfcheck, "CHECKS", (("broken", broken),))
    lines: list[str] = []
    assert not selfcheck.run(lines.append)
    assert len(lines) == 1
    assert lines[0].startswith("FAIL broken")
    assert lines[0].endswith("AssertionError: vector differs")
