"""Security and privacy of the scoring service, through the real router in-process.

- No raw member id, name, phone or coordinates in anything the service writes: the prediction
  log (raw bytes and decoded values), the registry and its event history, Python logs, the
  metrics exposition and every response. (``tests/e2e/test_serving.py`` runs the same scan over
  the files and Ray logs of the real deployment.)
- Pseudonym key rotation across a restart: each row records its key id, and rows written under
  the old key still join to the member through it.
- Admin endpoints: no default token, missing or wrong tokens refused, tokens compared in
  constant time.
- Loopback by default.
"""

from __future__ import annotations

import hmac
import logging
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from in_process_router import ADMIN_TOKEN, PSEUDONYM_KEY_K1, PSEUDONYM_KEY_K2, InProcessRouter, in_process_router

import serve_apps.openapi as admin_module  # where the admin token check lives
from cluster.config import DEFAULT_CONFIG, Settings, load_settings
from contracts.scoring import SCORE_PATH
from serve_apps.prediction_log import read_prediction_log
from serve_apps.pseudonym import KeyRing

MEMBER_ID, MEMBER_NAME, MEMBER_PHONE = "M-privacy-73190", "Ysolde Privacy-Fakename", "+1-555-0173-1907"
#: Off every cell centre and provider position, so a match can only be the member's location.
MEMBER_LAT, MEMBER_LON = 22.6133719, -45.1337719


def body(job_id: str, providers: tuple[int, ...] = (4, 2, 9), member_id: str = MEMBER_ID) -> dict:
    from datetime import UTC, datetime

    return {
        "job_id": job_id, "requested_at": datetime.now(UTC).isoformat(), "line_of_business": "auto_club",
        "service_type": "winch", "vehicle": {"vehicle_class": "car"}, "location": {"lat": MEMBER_LAT, "lon": MEMBER_LON},
        "member": {"member_id": member_id, "name": MEMBER_NAME, "phone": MEMBER_PHONE},
        "candidates": [{"provider_id": p} for p in providers],
    }


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter("%(name)s %(message)s %(exc_text)s").format(record) + repr(record.args))


@contextmanager
def every_log_record() -> Iterator[_Recorder]:
    """All records at DEBUG from the root and from Ray's loggers (which do not propagate)."""
    recorder = _Recorder()
    loggers = [logging.getLogger(name) for name in ("", "ray", "ray.serve", "serve_apps", "contracts", "retrain")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(recorder)
        lg.setLevel(logging.DEBUG)
    try:
        yield recorder
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(recorder)
            lg.setLevel(level)


def _text_needles() -> list[bytes]:
    coords = [f"{v:{fmt}}" for v in (MEMBER_LAT, MEMBER_LON) for fmt in ("", ".6f", ".5f", ".4f")]
    return [s.encode() for s in (MEMBER_ID, MEMBER_NAME, MEMBER_PHONE, *coords)]


def _float_needles() -> list[bytes]:
    return [struct.pack(fmt, v) for v in (MEMBER_LAT, MEMBER_LON) for fmt in ("<d", ">d", "<f", ">f")]


def _assert_no_pii(where: str, blob: bytes) -> None:
    for needle in _text_needles() + _float_needles():
        assert needle not in blob, f"member PII {needle!r} found in {where}"


def _assert_no_location_values(table: pa.Table) -> None:
    """Decoded, not just raw bytes: compressed parquet would hide a float from a byte scan."""
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_floating(column.type):
            values = column.to_numpy(zero_copy_only=False).astype(np.float64)
            for secret in (MEMBER_LAT, MEMBER_LON):
                assert not np.any(np.isclose(values, secret, rtol=0, atol=1e-5)), f"member coordinate in column {name}"
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            text = "\n".join(str(v) for v in column.to_pylist())
            _assert_no_pii(f"column {name}", text.encode())


def test_nothing_the_service_writes_holds_member_pii(tmp_path: Path) -> None:
    responses: list[bytes] = []
    with every_log_record() as records, in_process_router(tmp_path) as app:
        for i in range(5):
            responses.append(app.score(body(f"J-pii-{i}")).content)  # champion
        responses.append(app.score(body("J-pii-fallback", providers=(10**9, 10**9 + 1))).content)  # fallback, unknown providers
        broken = body("J-pii-bad")
        broken["member"]["name"] = MEMBER_NAME * 20  # over the limit: the 422 names the field, not the value
        broken["member"]["email"] = MEMBER_PHONE
        broken["location"]["lat"] = str(MEMBER_LAT)
        responses.append(app.score(broken).content)
        responses.append(app.request("POST", SCORE_PATH, content=repr(body("J-pii-not-json")).encode(),
                                     headers={"content-type": "application/json"}).content)
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        assert app.request("POST", "/v1/admin/traffic", json={"shadow": True, "reason": "privacy test"}, headers=admin).status_code == 200
        responses.append(app.request("POST", "/v1/admin/rollback", json={}, headers=admin).content)
        metrics = app.request("GET", "/metrics").content
        assert app.router.log.flush(timeout=30)
        table = read_prediction_log(app.prediction_log)
    assert table.num_rows >= 5 * 3 and records.lines, "the scan needs rows and log records to look at"
    assert [r for r in responses if b'"request_id"' in r], "some requests must have been scored"
    for i, content in enumerate(responses):
        _assert_no_pii(f"response {i}", content)
    _assert_no_pii("/metrics", metrics)
    _assert_no_pii("Python logs", "\n".join(records.lines).encode())
    _assert_no_location_values(table)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "world" not in p.parts]
    assert any(p.suffix == ".parquet" for p in written) and any("registry" in p.parts for p in written)
    for path in written:  # prediction log parts, registry metadata, aliases, history, traffic state
        _assert_no_pii(str(path.relative_to(tmp_path)), path.read_bytes())


def test_rotation_records_the_key_id_and_old_rows_still_join(tmp_path: Path) -> None:
    with in_process_router(tmp_path, keys=PSEUDONYM_KEY_K1) as app:
        before = app.score(body("J-before-rotation")).json()["request_id"]
    # Rotate: k2 is current, k1 stays in the ring so rows written under it still join.
    with in_process_router(tmp_path, keys=f"{PSEUDONYM_KEY_K2},{PSEUDONYM_KEY_K1}") as app:
        after = app.score(body("J-after-rotation")).json()["request_id"]
        other = app.score(body("J-other-member", member_id="M-someone-else")).json()["request_id"]
    log = read_prediction_log(tmp_path / "prediction_log").to_pandas().drop_duplicates("request_id").set_index("request_id")
    assert log.loc[before, "pseudonym_key_id"] == "k1"
    assert log.loc[after, "pseudonym_key_id"] == "k2"
    assert log.loc[before, "member_pseudonym"] != log.loc[after, "member_pseudonym"]
    ring = KeyRing.from_spec(f"{PSEUDONYM_KEY_K2},{PSEUDONYM_KEY_K1}")
    token = {r: f"{log.loc[r, 'pseudonym_key_id']}:{log.loc[r, 'member_pseudonym']}" for r in (before, after, other)}
    assert ring.matches(token[before], MEMBER_ID) and ring.matches(token[after], MEMBER_ID)
    assert not ring.matches(token[other], MEMBER_ID) and ring.matches(token[other], "M-someone-else")


# --- admin -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessRouter]:
    with in_process_router(tmp_path_factory.mktemp("admin")) as app:
        yield app


@pytest.mark.parametrize("path", ["/v1/admin/traffic", "/v1/admin/rollback"])
@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer ", f"Bearer {ADMIN_TOKEN}x", f"Bearer {ADMIN_TOKEN[:-1]}", f"bearer {ADMIN_TOKEN} ",
    f"Bearer {'x' * len(ADMIN_TOKEN)}", ADMIN_TOKEN, f"Basic {ADMIN_TOKEN}",
])
def test_admin_refuses_a_missing_or_wrong_token(router: InProcessRouter, path: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    r = router.request("POST", path, json={"challenger_weight": 0.5} if path.endswith("traffic") else {}, headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "unauthorized"
    assert ADMIN_TOKEN not in r.text


def test_admin_compares_tokens_in_constant_time(router: InProcessRouter, monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    constant_time = hmac.compare_digest

    def compare_digest(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    monkeypatch.setattr(admin_module.hmac, "compare_digest", compare_digest)
    assert router.request("POST", "/v1/admin/traffic", json={}, headers={"authorization": "Bearer guess"}).status_code == 401
    assert compared == [(b"Bearer guess", f"Bearer {ADMIN_TOKEN}".encode())]


@pytest.mark.parametrize("authorization", [None, "Bearer ", "Bearer None", "Bearer null", f"Bearer {ADMIN_TOKEN}"])
def test_without_a_configured_token_admin_is_disabled_whatever_is_sent(tmp_path: Path, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    with in_process_router(tmp_path, admin_token=None) as app:
        r = app.request("POST", "/v1/admin/traffic", json={"challenger_weight": 1.0}, headers=headers)
    assert r.status_code == 403, r.text
    assert "DISPATCHML_ADMIN_TOKEN" in r.json()["detail"]


def test_an_empty_token_setting_is_no_token(tmp_path: Path) -> None:
    with in_process_router(tmp_path, admin_token="") as app:
        assert app.router.admin_token is None
        assert app.request("POST", "/v1/admin/rollback", json={}, headers={"authorization": "Bearer "}).status_code == 403


# --- loopback ----------------------------------------------------------------------------------


def test_the_service_binds_loopback_unless_configured_otherwise(tmp_path: Path) -> None:
    assert Settings().serving.host == "127.0.0.1"
    assert yaml.safe_load(DEFAULT_CONFIG.read_text())["serving"]["host"] == "127.0.0.1"
    assert load_settings(environ={}).serving.host == "127.0.0.1"
    assert load_settings(environ={"DISPATCHML__SERVING__HOST": "0.0.0.0"}).serving.host == "0.0.0.0"  # only when configured
