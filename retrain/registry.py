"""File-based model registry: immutable, checksummed versions and atomically moved aliases.

Families
--------
``eta``, ``acceptance`` and ``fallback`` hold single models. ``dispatch`` is what serving
loads: a version that stores the ranking policy and *references* one ``eta`` and one
``acceptance`` version (``metadata.components``). Promoting, comparing and rolling back the
pair as one version is cleaner than moving two aliases in step, because the ranking depends on
both models jointly; a half-finished two-alias promotion would serve an ETA model with the
wrong acceptance model. The component families still get their own versions, metrics and
lineage, so each model can be inspected, re-bundled, or monitored on its own, and referencing
(not copying) them keeps one copy of each booster. Components are immutable, so a reference
cannot go stale.

Aliases: ``champion`` is what serving uses, ``challenger`` what is being compared against it
(shadow or canary), and ``fallback`` a last-known-good version to load when the champion fails
verification or loading. For the ``fallback`` family, ``champion`` is the history-table model
serving degrades to when online features are unavailable.

Layout under ``root`` (``Settings.paths.registry``)::

    <family>/versions/<version>/metadata.json     ModelMetadata, incl. sha256 of every artifact
    <family>/versions/<version>/artifacts/...     files written by the model's save()
    <family>/aliases/<alias>.json                 AliasRecord: target, generation, rollback stack
    <family>/aliases/history.jsonl                append-only log of every alias move
    <family>/.lock                                fcntl lock serialising commits and alias moves
    <family>/.staging/                            versions being written (never read)

Guarantees
----------
* **Immutable versions.** A version is written under ``.staging`` and appears by one
  ``os.rename`` into ``versions/``; an existing version is never overwritten
  (:class:`VersionExistsError`). Readers never see a half-written version.
* **Verified artifacts.** Every artifact's sha256 and size are recorded in ``metadata.json``
  and re-checked on load and before an alias moves; a mismatch, a missing or an unexpected file
  raises :class:`CorruptArtifactError` instead of serving a damaged model.
* **Atomic aliases.** ``champion``/``challenger``/``fallback`` files are replaced with
  ``os.replace`` of a fsynced temp file under an exclusive ``fcntl.flock``, so concurrent
  movers serialise and readers (who take no lock) see the old or the new target, never a torn
  file. Each record carries a ``generation`` (for compare-and-set via ``expected_generation``)
  and the stack of previous targets, so :meth:`ModelRegistry.rollback` is one call and
  repeated rollbacks walk further back. The stack lives in the alias file itself, not only in
  the history log, so the current target and its rollback path change in the same atomic
  write; ``history.jsonl`` is the audit trail (who, why, when, from what).

On shared object storage
------------------------
The same key layout works on S3/GCS/ABFS through fsspec paths, with two substitutions, because
object stores have neither directory rename nor ``flock``:

* *Version commit*: upload the artifacts under ``versions/<version>/artifacts/`` first, then
  write ``metadata.json`` last with a create-only conditional put (S3 ``If-None-Match: *``,
  GCS ``ifGenerationMatch=0``). ``metadata.json`` is the commit marker: readers ignore a
  version prefix without it, and the conditional put refuses an overwrite.
* *Alias move*: read the alias object and its generation/ETag, then write the new record with
  ``ifGenerationMatch=<generation>`` (GCS) or ``If-Match: <etag>`` (S3); a lost race fails and
  is retried from the read. That replaces the lock. ``history.jsonl`` becomes one object per
  move, ``aliases/history/<alias>/<generation:012d>.json``, written create-only, since objects
  cannot be appended to.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrain.acceptance_model import AcceptanceModel
from retrain.eta_model import EtaModel
from retrain.fallback import FallbackModel
from retrain.ranking import DispatchBundle, RankingPolicy

Family = Literal["eta", "acceptance", "fallback", "dispatch"]
Alias = Literal["champion", "challenger", "fallback"]
FAMILIES: tuple[str, ...] = get_args(Family)
ALIASES: tuple[str, ...] = get_args(Alias)

#: A dispatch version must reference one version of each of these families.
DISPATCH_COMPONENTS: tuple[str, ...] = ("eta", "acceptance")

_VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HASH_CHUNK = 1 << 20

LoadedModel = EtaModel | AcceptanceModel | FallbackModel | DispatchBundle


class RegistryError(Exception):
    """Base class of registry failures."""


class VersionExistsError(RegistryError):
    """The version id is taken; versions are immutable, register a new one instead."""


class VersionNotFoundError(RegistryError):
    """No such version (or alias) in the family."""


class CorruptArtifactError(RegistryError):
    """An artifact does not match its recorded checksum; the version must not be served."""


class AliasConflictError(RegistryError):
    """The alias moved since it was read (``expected_generation`` mismatch); re-read and retry."""


class NothingToRollBackError(RegistryError):
    """The alias has no previous target to roll back to."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")


class TrainingWindow(_Record):
    """The request-time span of the rows the model was fitted on (calibration included)."""

    start: datetime
    end: datetime


class ArtifactChecksum(_Record):
    path: str
    sha256: str
    size_bytes: int


class VersionSpec(_Record):
    """What a trainer states about a new version; the registry adds id, time and checksums."""

    family: Family
    training_window: TrainingWindow
    data_fingerprint: str
    feature_service: str
    feature_definition_version: str
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    #: ``{segment column: {segment value: {metric: value}}}`` on the holdout.
    segment_metrics: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)
    parent_version: str | None = None
    #: For ``dispatch``: ``{"eta": version, "acceptance": version}``.
    components: dict[str, str] = Field(default_factory=dict)
    #: Free-form provenance: trigger event, run id, code revision, ...
    lineage: dict[str, Any] = Field(default_factory=dict)


class ModelMetadata(VersionSpec):
    """``metadata.json`` of a committed version."""

    version: str
    created_at: datetime
    artifacts: list[ArtifactChecksum]


class AliasRecord(_Record):
    """``aliases/<alias>.json``: the current target and how to undo the moves that led here."""

    family: Family
    alias: Alias
    version: str
    generation: int
    moved_at: datetime
    moved_by: str
    reason: str
    previous_version: str | None
    #: Earlier targets, oldest first; rollback pops the last one.
    stack: list[str] = Field(default_factory=list)


class AliasMove(_Record):
    """One line of ``aliases/history.jsonl``."""

    family: Family
    alias: Alias
    action: Literal["set", "rollback"]
    version: str
    previous_version: str | None
    generation: int
    moved_at: datetime
    moved_by: str
    reason: str


class ModelRegistry:
    """A registry rooted at a directory (``Settings.paths.registry``)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- versions ---------------------------------------------------------------------------

    def register(
        self,
        spec: VersionSpec,
        write_artifacts: Callable[[Path], object],
        *,
        version: str | None = None,
    ) -> ModelMetadata:
        """Commit a new immutable version whose files ``write_artifacts(directory)`` creates.

        ``write_artifacts`` is typically a model's ``save``. Raises :class:`VersionExistsError`
        if ``version`` is taken.
        """
        version = version or new_version_id()
        self._check_version_id(version)
        if spec.family == "dispatch":
            self._check_components(spec.components)
        family_dir = self._family_dir(spec.family)
        staging = family_dir / ".staging" / f"{version}.{secrets.token_hex(4)}"
        try:
            artifacts = staging / "artifacts"
            artifacts.mkdir(parents=True)
            write_artifacts(artifacts)
            metadata = ModelMetadata(
                **spec.model_dump(),
                version=version,
                created_at=datetime.now(UTC),
                artifacts=checksum_tree(artifacts),
            )
            _write_durably(staging / "metadata.json", metadata.model_dump_json(indent=2))
            for path in artifacts.rglob("*"):
                if path.is_file():
                    path.chmod(0o444)
            with self._lock(spec.family):
                final = self._version_dir(spec.family, version)
                if final.exists():
                    raise VersionExistsError(f"{spec.family} version {version} exists; versions are immutable")
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staging, final)
                _fsync_dir(final.parent)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return metadata

    def register_model(self, spec: VersionSpec, model: Any, *, version: str | None = None) -> ModelMetadata:
        """Register a model object that has ``save(directory)``."""
        return self.register(spec, model.save, version=version)

    def versions(self, family: str) -> list[str]:
        """Committed version ids of ``family``, oldest first (ids sort by creation time)."""
        directory = self._family_dir(family) / "versions"
        if not directory.exists():
            return []
        return sorted(p.name for p in directory.iterdir() if (p / "metadata.json").exists())

    def resolve(self, family: str, ref: str) -> str:
        """The version id that ``ref`` (a version id or an alias name) points to."""
        if ref in ALIASES:
            record = self.alias(family, ref)
            if record is None:
                raise VersionNotFoundError(f"alias {family}@{ref} is not set; register a version and set the alias")
            return record.version
        if not (self._version_dir(family, ref) / "metadata.json").exists():
            raise VersionNotFoundError(f"{family} has no version {ref!r}; known: {self.versions(family)[-5:]}")
        return ref

    def metadata(self, family: str, ref: str) -> ModelMetadata:
        """Metadata of a version or alias target (not checksum-verified; see :meth:`verify`)."""
        version = self.resolve(family, ref)
        path = self._version_dir(family, version) / "metadata.json"
        try:
            return ModelMetadata.model_validate_json(path.read_text())
        except ValidationError as exc:
            raise CorruptArtifactError(f"{family}/{version}/metadata.json is unreadable: {exc.error_count()} errors") from exc

    def verify(self, family: str, ref: str) -> ModelMetadata:
        """Re-hash every artifact; raise :class:`CorruptArtifactError` on any mismatch."""
        metadata = self.metadata(family, ref)
        artifacts = self._version_dir(family, metadata.version) / "artifacts"
        recorded = {a.path: a for a in metadata.artifacts}
        actual = {a.path: a for a in checksum_tree(artifacts)}
        problems = [f"missing {p}" for p in recorded.keys() - actual.keys()]
        problems += [f"unexpected {p}" for p in actual.keys() - recorded.keys()]
        problems += [f"checksum mismatch {p}" for p in recorded.keys() & actual.keys() if recorded[p] != actual[p]]
        if problems:
            raise CorruptArtifactError(
                f"{family}/{metadata.version} failed verification ({'; '.join(sorted(problems))}); "
                "do not serve it: roll the alias back or re-register from the training run"
            )
        return metadata

    def artifact_dir(self, family: str, ref: str) -> Path:
        """Verified artifact directory of a version or alias target."""
        metadata = self.verify(family, ref)
        return self._version_dir(family, metadata.version) / "artifacts"

    def load_model(self, family: str, ref: str) -> LoadedModel:
        """Load a verified model: ``EtaModel``, ``AcceptanceModel``, ``FallbackModel`` or ``DispatchBundle``."""
        directory = self.artifact_dir(family, ref)
        if family == "eta":
            return EtaModel.load(directory)
        if family == "acceptance":
            return AcceptanceModel.load(directory)
        if family == "fallback":
            return FallbackModel.load(directory)
        components = self.metadata(family, ref).components
        return DispatchBundle(
            eta=EtaModel.load(self.artifact_dir("eta", components["eta"])),
            acceptance=AcceptanceModel.load(self.artifact_dir("acceptance", components["acceptance"])),
            policy=RankingPolicy.load(directory),
        )

    # -- aliases ----------------------------------------------------------------------------

    def alias(self, family: str, alias: str) -> AliasRecord | None:
        """The alias record, or None if the alias was never set. Lock-free: replaces are atomic."""
        self._check_alias(alias)
        path = self._alias_path(family, alias)
        if not path.exists():
            return None
        return AliasRecord.model_validate_json(path.read_text())

    def set_alias(
        self,
        family: str,
        alias: str,
        version: str,
        *,
        moved_by: str,
        reason: str,
        expected_generation: int | None = None,
        at: datetime | None = None,
    ) -> AliasRecord:
        """Point ``family@alias`` at ``version`` (verified first); a no-op if it already does.

        ``expected_generation`` makes the move a compare-and-set: it fails with
        :class:`AliasConflictError` if someone moved the alias since the caller read it
        (0 means "the alias must not exist yet"). ``at`` is the move's time (default now): the
        release controller compares it with prediction-log request times, so a controller run on
        simulated time (``cluster.closed_loop``) records its moves on that clock.
        """
        self._check_alias(alias)
        self.verify(family, version)
        with self._lock(family):
            current = self.alias(family, alias)
            _check_generation(current, expected_generation)
            if current is not None and current.version == version:
                return current
            stack = [*current.stack, current.version] if current else []
            return self._move(family, alias, version, current, stack, "set", moved_by, reason, at)

    def rollback(self, family: str, alias: str, *, moved_by: str, reason: str = "rollback", at: datetime | None = None) -> AliasRecord:
        """Restore the alias's previous target; call again to go further back."""
        self._check_alias(alias)
        with self._lock(family):
            current = self.alias(family, alias)
            if current is None or not current.stack:
                raise NothingToRollBackError(f"{family}@{alias} has no previous target to roll back to")
            target = current.stack[-1]
            self.verify(family, target)
            return self._move(family, alias, target, current, current.stack[:-1], "rollback", moved_by, reason, at)

    def history(self, family: str, alias: str | None = None) -> list[AliasMove]:
        """Alias moves of ``family`` in the order they happened, optionally for one alias."""
        path = self._family_dir(family) / "aliases" / "history.jsonl"
        if not path.exists():
            return []
        moves = [AliasMove.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]
        return [m for m in moves if alias is None or m.alias == alias]

    def _move(
        self,
        family: str,
        alias: str,
        version: str,
        current: AliasRecord | None,
        stack: list[str],
        action: Literal["set", "rollback"],
        moved_by: str,
        reason: str,
        at: datetime | None = None,
    ) -> AliasRecord:
        """Write the new alias record atomically, then log the move. Caller holds the lock."""
        record = AliasRecord(
            family=cast(Family, family),
            alias=cast(Alias, alias),
            version=version,
            generation=(current.generation if current else 0) + 1,
            moved_at=(at or datetime.now(UTC)).astimezone(UTC),
            moved_by=moved_by,
            reason=reason,
            previous_version=current.version if current else None,
            stack=stack,
        )
        path = self._alias_path(family, alias)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        _write_durably(temp, record.model_dump_json(indent=2))
        os.replace(temp, path)
        _fsync_dir(path.parent)
        move = AliasMove(
            family=record.family,
            alias=record.alias,
            action=action,
            version=version,
            previous_version=record.previous_version,
            generation=record.generation,
            moved_at=record.moved_at,
            moved_by=moved_by,
            reason=reason,
        )
        with (path.parent / "history.jsonl").open("a") as log:
            log.write(move.model_dump_json() + "\n")
            log.flush()
            os.fsync(log.fileno())
        return record

    # -- layout -----------------------------------------------------------------------------

    def _family_dir(self, family: str) -> Path:
        if family not in FAMILIES:
            raise ValueError(f"unknown model family {family!r}; known: {list(FAMILIES)}")
        return self.root / family

    def _version_dir(self, family: str, version: str) -> Path:
        return self._family_dir(family) / "versions" / version

    def _alias_path(self, family: str, alias: str) -> Path:
        return self._family_dir(family) / "aliases" / f"{alias}.json"

    @staticmethod
    def _check_alias(alias: str) -> None:
        if alias not in ALIASES:
            raise ValueError(f"unknown alias {alias!r}; known: {list(ALIASES)}")

    @staticmethod
    def _check_version_id(version: str) -> None:
        if not _VERSION_ID.match(version) or version in ALIASES:
            raise ValueError(f"invalid version id {version!r}: use letters, digits, '.', '_', '-' and not an alias name")

    def _check_components(self, components: dict[str, str]) -> None:
        if sorted(components) != sorted(DISPATCH_COMPONENTS):
            raise ValueError(f"a dispatch version needs components {list(DISPATCH_COMPONENTS)}, got {sorted(components)}")
        for family, version in components.items():
            self.verify(family, version)

    @contextmanager
    def _lock(self, family: str) -> Iterator[None]:
        """Exclusive per-family lock across processes (``flock`` on ``<family>/.lock``)."""
        path = self._family_dir(family) / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def new_version_id(now: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSffffffZ-<8 hex>``: sorts by creation time, unique across writers."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_tree(directory: Path) -> list[ArtifactChecksum]:
    """sha256 and size of every file under ``directory``, by POSIX relative path."""
    directory = Path(directory)
    return [
        ArtifactChecksum(path=p.relative_to(directory).as_posix(), sha256=sha256_file(p), size_bytes=p.stat().st_size)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    ]


def _check_generation(current: AliasRecord | None, expected: int | None) -> None:
    actual = current.generation if current else 0
    if expected is not None and expected != actual:
        raise AliasConflictError(f"alias is at generation {actual}, expected {expected}; re-read it and retry")


def _write_durably(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
