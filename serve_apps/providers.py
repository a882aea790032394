"""Provider attributes the online path needs but the request does not carry: the cohort, a
segment tag for every log row and metric breakdown. Loaded from the warehouse's static
``world/providers.parquet``; providers not in it (onboarded since) get ``unknown``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

UNKNOWN_COHORT = "unknown"


class ProviderDirectory:
    def __init__(self, provider_ids: np.ndarray, cohorts: np.ndarray) -> None:
        order = np.argsort(provider_ids)
        self._ids = np.asarray(provider_ids, dtype=np.int64)[order]
        self._cohorts = np.asarray(cohorts, dtype=object)[order]

    @classmethod
    def from_parquet(cls, path: Path) -> ProviderDirectory:
        table = pq.read_table(path, columns=["provider_id", "provider_cohort"])
        return cls(table.column("provider_id").to_numpy(), np.asarray(table.column("provider_cohort").to_pylist(), dtype=object))

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def cohorts(self, provider_ids: np.ndarray) -> list[str]:
        ids = np.asarray(provider_ids, dtype=np.int64)
        if len(self._ids) == 0:
            return [UNKNOWN_COHORT] * len(ids)
        pos = np.minimum(np.searchsorted(self._ids, ids), len(self._ids) - 1)
        found = self._ids[pos] == ids
        return [str(c) if f else UNKNOWN_COHORT for c, f in zip(self._cohorts[pos], found, strict=True)]
