"""Registry: immutable versions, checksum verification, atomic alias moves, history and rollback."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from retrain.registry import (
    AliasConflictError,
    CorruptArtifactError,
    ModelRegistry,
    NothingToRollBackError,
    TrainingWindow,
    VersionExistsError,
    VersionNotFoundError,
    VersionSpec,
)


def spec(family: str = "eta", **extra: object) -> VersionSpec:
    return VersionSpec(
        family=family,
        training_window=TrainingWindow(start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 2, 1, tzinfo=UTC)),
        data_fingerprint="abc123",
        feature_service="dispatch_candidate_features",
        feature_definition_version="f00d",
        hyperparameters={"num_leaves": 63},
        metrics={"mae": 4.2, "auc": float("nan")},
        segment_metrics={"region_id": {"3": {"mae": 5.0, "n": 120.0}}},
        lineage={"trigger": "drift:region_3"},
        **extra,
    )


def writer(payload: bytes):
    def write(directory: Path) -> None:
        (directory / "model.txt").write_bytes(payload)
        (directory / "sub").mkdir()
        (directory / "sub" / "state.json").write_text('{"margin": 1.5}')

    return write


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def test_register_records_metadata_and_checksums(registry: ModelRegistry) -> None:
    meta = registry.register(spec(), writer(b"trees"), version="v1")
    assert registry.versions("eta") == ["v1"]
    loaded = registry.verify("eta", "v1")
    assert loaded.model_dump_json() == meta.model_dump_json()  # NaN metrics survive the round trip
    assert {a.path for a in loaded.artifacts} == {"model.txt", "sub/state.json"}
    assert loaded.segment_metrics["region_id"]["3"]["mae"] == 5.0
    assert loaded.lineage == {"trigger": "drift:region_3"}
    assert registry.artifact_dir("eta", "v1").joinpath("model.txt").read_bytes() == b"trees"


def test_versions_are_immutable(registry: ModelRegistry) -> None:
    registry.register(spec(), writer(b"first"), version="v1")
    with pytest.raises(VersionExistsError):
        registry.register(spec(), writer(b"second"), version="v1")
    assert registry.artifact_dir("eta", "v1").joinpath("model.txt").read_bytes() == b"first"
    assert not any((registry.root / "eta" / ".staging").iterdir())


def test_a_failed_write_leaves_no_version(registry: ModelRegistry) -> None:
    def broken(directory: Path) -> None:
        (directory / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        registry.register(spec(), broken, version="v1")
    assert registry.versions("eta") == []


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "add"])
def test_a_corrupt_artifact_is_refused(registry: ModelRegistry, damage: str) -> None:
    registry.register(spec(), writer(b"trees" * 100), version="v1")
    path = registry.root / "eta" / "versions" / "v1" / "artifacts" / "model.txt"
    path.chmod(0o644)
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[10] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-1])
    elif damage == "delete":
        path.unlink()
    else:
        path.with_name("extra.bin").write_bytes(b"x")
    with pytest.raises(CorruptArtifactError):
        registry.verify("eta", "v1")
    with pytest.raises(CorruptArtifactError):
        registry.artifact_dir("eta", "v1")
    with pytest.raises(CorruptArtifactError):
        registry.set_alias("eta", "champion", "v1", moved_by="test", reason="promote")


def test_alias_moves_history_and_rollback(registry: ModelRegistry) -> None:
    for v in ("v1", "v2", "v3"):
        registry.register(spec(), writer(v.encode()), version=v)
    assert registry.alias("eta", "champion") is None
    for v in ("v1", "v2", "v3"):
        registry.set_alias("eta", "champion", v, moved_by="alice", reason=f"promote {v}")
    record = registry.alias("eta", "champion")
    assert (record.version, record.generation, record.previous_version, record.stack) == ("v3", 3, "v2", ["v1", "v2"])
    assert registry.resolve("eta", "champion") == "v3"

    assert registry.rollback("eta", "champion", moved_by="bob", reason="p90 regression").version == "v2"
    assert registry.rollback("eta", "champion", moved_by="bob").version == "v1"
    with pytest.raises(NothingToRollBackError):
        registry.rollback("eta", "champion", moved_by="bob")

    history = registry.history("eta", "champion")
    assert [(m.action, m.version, m.previous_version) for m in history] == [
        ("set", "v1", None),
        ("set", "v2", "v1"),
        ("set", "v3", "v2"),
        ("rollback", "v2", "v3"),
        ("rollback", "v1", "v2"),
    ]
    assert history[3].moved_by == "bob" and history[3].reason == "p90 regression"
    assert [m.generation for m in history] == [1, 2, 3, 4, 5]


def test_aliases_are_independent_and_setting_the_same_target_is_a_no_op(registry: ModelRegistry) -> None:
    registry.register(spec(), writer(b"a"), version="v1")
    registry.register(spec(), writer(b"b"), version="v2")
    registry.set_alias("eta", "champion", "v1", moved_by="t", reason="r")
    registry.set_alias("eta", "challenger", "v2", moved_by="t", reason="r")
    again = registry.set_alias("eta", "champion", "v1", moved_by="t", reason="r")
    assert again.generation == 1
    assert registry.resolve("eta", "challenger") == "v2"
    assert len(registry.history("eta")) == 2


def test_compare_and_set_refuses_a_stale_generation(registry: ModelRegistry) -> None:
    registry.register(spec(), writer(b"a"), version="v1")
    registry.register(spec(), writer(b"b"), version="v2")
    registry.set_alias("eta", "champion", "v1", moved_by="t", reason="r", expected_generation=0)
    with pytest.raises(AliasConflictError):
        registry.set_alias("eta", "champion", "v2", moved_by="t", reason="r", expected_generation=0)
    registry.set_alias("eta", "champion", "v2", moved_by="t", reason="r", expected_generation=1)


def test_unknown_references_are_clear_errors(registry: ModelRegistry) -> None:
    with pytest.raises(VersionNotFoundError, match="not set"):
        registry.resolve("eta", "champion")
    with pytest.raises(VersionNotFoundError):
        registry.resolve("eta", "v9")
    with pytest.raises(ValueError, match="family"):
        registry.versions("price")
    with pytest.raises(ValueError, match="alias"):
        registry.alias("eta", "prod")
    with pytest.raises(ValueError, match="version id"):
        registry.register(spec(), writer(b"a"), version="../escape")


def test_dispatch_versions_must_reference_existing_components(registry: ModelRegistry) -> None:
    with pytest.raises(ValueError, match="components"):
        registry.register(spec("dispatch"), writer(b"policy"))
    with pytest.raises(VersionNotFoundError):
        registry.register(spec("dispatch", components={"eta": "nope", "acceptance": "nope"}), writer(b"policy"))


def _mover(root: str, worker: int, moves: int) -> None:
    registry = ModelRegistry(root)
    for i in range(moves):
        registry.set_alias("eta", "champion", f"v{(worker + i) % 3}", moved_by=f"worker-{worker}", reason=str(i))
        if i % 5 == 4:
            try:
                registry.rollback("eta", "champion", moved_by=f"worker-{worker}")
            except NothingToRollBackError:
                pass


def test_concurrent_alias_moves_stay_consistent(registry: ModelRegistry) -> None:
    for v in ("v0", "v1", "v2"):
        registry.register(spec(), writer(v.encode()), version=v)
    torn_reads: list[Exception] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                registry.alias("eta", "champion")
            except Exception as exc:  # noqa: BLE001 - a torn or half-written alias file would land here
                torn_reads.append(exc)

    watcher = threading.Thread(target=reader)
    watcher.start()
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_mover, args=(str(registry.root), w, 20)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=60)
    stop.set()
    watcher.join()
    assert all(p.exitcode == 0 for p in workers)
    assert torn_reads == []

    record = registry.alias("eta", "champion")
    history = registry.history("eta", "champion")
    assert record.generation == len(history) >= 40
    assert [m.generation for m in history] == list(range(1, len(history) + 1))
    for before, after in zip(history, history[1:], strict=False):
        assert after.previous_version == before.version
    assert history[-1].version == record.version
    assert len(record.stack) == sum(m.action == "set" for m in history) - sum(m.action == "rollback" for m in history) - 1
