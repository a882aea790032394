"""Member pseudonyms: stable per key, unlinkable across keys, joinable after rotation, never keyless."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serve_apps.pseudonym import (
    KEYS_ENV,
    KEYS_FILE_ENV,
    KeyRing,
    PseudonymKeyError,
    hmac_pseudonym,
    same_pseudonym,
)

K1 = bytes(range(32))
K2 = bytes(range(100, 132))


def spec(*keys: tuple[str, bytes]) -> str:
    return ",".join(f"{key_id}:{base64.b64encode(secret).decode()}" for key_id, secret in keys)


member_ids = st.text(min_size=1, max_size=64)


@given(member_ids)
def test_pseudonyms_are_deterministic_per_key(member_id: str) -> None:
    ring = KeyRing.from_spec(spec(("k1", K1)))
    again = KeyRing.from_spec(spec(("k1", K1)))
    assert ring.pseudonymize(member_id) == again.pseudonymize(member_id) == ("k1", ring.pseudonym_under("k1", member_id))


@given(member_ids)
def test_different_keys_give_unrelated_pseudonyms(member_id: str) -> None:
    assert hmac_pseudonym(K1, member_id) != hmac_pseudonym(K2, member_id)


def test_a_pseudonym_is_an_hmac_not_a_plain_hash_of_the_id() -> None:
    member_id = "M000123"
    _, pseudonym = KeyRing.from_spec(spec(("k1", K1))).pseudonymize(member_id)
    assert len(pseudonym) == 64
    assert member_id not in pseudonym
    # A dictionary attacker without the key hashes candidate ids: none of these recomputes it.
    for guess in (
        hashlib.sha256(member_id.encode()).hexdigest(),
        hmac.new(b"", member_id.encode(), hashlib.sha256).hexdigest(),
        hmac.new(K2, member_id.encode(), hashlib.sha256).hexdigest(),
    ):
        assert guess != pseudonym


def test_distinct_members_get_distinct_pseudonyms() -> None:
    ring = KeyRing.from_spec(spec(("k1", K1)))
    ids = [f"M{n:06d}" for n in range(5_000)]
    assert len({ring.pseudonymize(i)[1] for i in ids}) == len(ids)


def test_rotation_writes_under_the_new_key_and_still_joins_old_records() -> None:
    before = KeyRing.from_spec(spec(("k1", K1)))
    old_token = before.token("M000123")
    assert old_token.startswith("k1:")

    after = KeyRing.from_spec(spec(("k2", K2), ("k1", K1)))
    assert after.current_key_id == "k2"
    assert after.key_ids == ("k2", "k1")
    key_id, new_pseudonym = after.pseudonymize("M000123")
    assert key_id == "k2"
    assert new_pseudonym != old_token.split(":")[1]
    # Joining an old record: recompute under the key id stored with it.
    assert same_pseudonym(after.pseudonym_under("k1", "M000123"), old_token.split(":")[1])
    assert after.matches(old_token, "M000123")
    assert not after.matches(old_token, "M000124")


def test_a_retired_key_can_no_longer_join() -> None:
    old_token = KeyRing.from_spec(spec(("k1", K1))).token("M000123")
    retired = KeyRing.from_spec(spec(("k2", K2)))
    with pytest.raises(PseudonymKeyError, match="'k1' is not in the key ring"):
        retired.matches(old_token, "M000123")


def test_there_is_no_default_key() -> None:
    with pytest.raises(PseudonymKeyError, match=KEYS_ENV) as raised:
        KeyRing.from_env({})
    assert "no default" in str(raised.value)
    with pytest.raises(PseudonymKeyError):
        KeyRing.from_env({KEYS_ENV: ""})


def test_keys_load_from_the_environment_or_a_file(tmp_path: Path) -> None:
    from_env = KeyRing.from_env({KEYS_ENV: spec(("k2", K2), ("k1", K1))})
    key_file = tmp_path / "pseudonym_keys"
    key_file.write_text(spec(("k2", K2)) + "\n" + spec(("k1", K1)) + "\n")
    from_file = KeyRing.from_env({KEYS_FILE_ENV: str(key_file)})
    assert from_env.pseudonymize("M1") == from_file.pseudonymize("M1")
    assert from_file.key_ids == ("k2", "k1")
    with pytest.raises(PseudonymKeyError, match="only one"):
        KeyRing.from_env({KEYS_ENV: spec(("k1", K1)), KEYS_FILE_ENV: str(key_file)})
    with pytest.raises(PseudonymKeyError, match="cannot read"):
        KeyRing.from_env({KEYS_FILE_ENV: str(tmp_path / "absent")})


@pytest.mark.parametrize(
    ("bad_spec", "message"),
    [
        ("k1", "key_id:base64secret"),
        ("k1:not base64!", "not valid base64"),
        (spec(("k1", b"short")), "at least 32"),
        (spec(("k/1", K1)), "key id"),
        (spec(("k1", K1), ("k1", K2)), "repeated: k1"),
        (" , ", "empty"),
    ],
)
def test_malformed_key_specs_are_refused_clearly(bad_spec: str, message: str) -> None:
    with pytest.raises(PseudonymKeyError, match=message):
        KeyRing.from_spec(bad_spec)


def test_secrets_never_appear_in_errors_or_reprs() -> None:
    encoded = base64.b64encode(K1).decode()
    ring = KeyRing.from_spec(spec(("k1", K1)))
    assert encoded not in repr(ring) and K1.hex() not in repr(ring)
    with pytest.raises(PseudonymKeyError) as raised:
        KeyRing.from_spec(f"k1:{encoded}!")
    assert encoded not in str(raised.value)


def test_ephemeral_keys_are_random_and_announce_themselves(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serve_apps.pseudonym"):
        a, b = KeyRing.ephemeral(), KeyRing.ephemeral()
    assert a.is_ephemeral and b.is_ephemeral
    assert a.current_key_id.startswith("ephemeral-")
    assert a.pseudonymize("M1")[1] != b.pseudonymize("M1")[1]
    assert "will not join across restarts" in caplog.text
    assert not KeyRing.from_spec(spec(("k1", K1))).is_ephemeral


def test_same_pseudonym_is_plain_equality() -> None:
    assert same_pseudonym("ab" * 32, "ab" * 32)
    assert not same_pseudonym("ab" * 32, "ab" * 31 + "ac")
    assert not same_pseudonym("ab", "abc")
