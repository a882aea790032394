"""ADWIN: adaptive windowing change detector (Bifet & Gavaldà 2007), ADWIN2 variant.

A. Bifet and R. Gavaldà, "Learning from time-changing data with adaptive windowing", SIAM
International Conference on Data Mining, 2007. ADWIN keeps a window ``W`` of the most recent
values and drops its oldest part whenever two sub-windows ``W0`` (older) and ``W1`` (newer) have
means that differ by more than chance allows; a drop is a detected change.

ADWIN2 stores ``W`` compressed in an *exponential histogram*: buckets of ``2^i`` values
(summary: sum and sum of squared deviations), at most ``max_buckets`` (the paper's ``M``) per
size; when a size overflows, its two oldest buckets merge into one of the next size. Memory and
the cut check are then ``O(M log |W|)``, and only bucket boundaries are tried as cut points.

Cut test (the Bernstein-type bound river uses, ``river.drift.ADWIN``): for a split into ``n0`` and
``n1`` values with means ``μ0``, ``μ1``, window variance ``σ²`` and ``n = n0 + n1``::

    δ' = ln(2 ln(n) / delta)
    m  = 1 / (n0 - min_window_length + 1) + 1 / (n1 - min_window_length + 1)
    ε  = sqrt(2 m σ² δ') + (2/3) m δ'
    cut if |μ0 - μ1| > ε

Parameters (river's defaults):

- ``delta`` = 0.002: confidence; smaller means fewer false alarms and later detection.
- ``clock`` = 32: the cut test runs every ``clock`` values (it is the costly step).
- ``max_buckets`` = 5: ``M``, buckets kept per size.
- ``min_window_length`` = 5: a sub-window must hold at least this many values.
- ``grace_period`` = 10: no test before this many values are in the window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


class ADWIN:
    """ADWIN2 change detector; ``update(x)`` returns True on the value that triggered a cut."""

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period

    def _ensure_state(self) -> None:
        if hasattr(self, "rows_"):
            return
        if not 0.0 < self.delta < 1.0:
            raise ValueError(f"delta is a probability in (0, 1), got {self.delta}")
        #: rows_[i]: buckets of 2**i values, oldest first, each [sum, squared deviations].
        self.rows_: list[list[list[float]]] = []
        self.width_ = 0
        self.total_ = 0.0
        self.variance_sum_ = 0.0  # Σ (x - mean)² over the window
        self.seen_ = 0
        self.detections_ = 0

    @property
    def estimation_(self) -> float:
        """Mean of the current window."""
        self._ensure_state()
        return self.total_ / self.width_ if self.width_ else 0.0

    @property
    def variance_(self) -> float:
        self._ensure_state()
        return self.variance_sum_ / self.width_ if self.width_ else 0.0

    def update(self, x: float) -> bool:
        """Add one value; True if the window was cut (a change) on this value."""
        self._ensure_state()
        x = float(x)
        if not np.isfinite(x):
            raise ValueError(f"ADWIN takes finite values, got {x}")
        self._insert(x)
        self.seen_ += 1
        if self.seen_ % self.clock or self.width_ <= self.grace_period:
            return False
        cut = False
        while self._cut_once():
            cut = True
        if cut:
            self.detections_ += 1
        return cut

    def update_many(self, xs: Iterable[float]) -> np.ndarray:
        """Add a sequence in order; the indices (into ``xs``) of the values that triggered a cut."""
        return np.flatnonzero(np.fromiter((self.update(x) for x in np.asarray(xs, dtype=np.float64)), dtype=bool))

    # -- exponential histogram ------------------------------------------------------------------
    def _insert(self, x: float) -> None:
        if self.width_:
            mean = self.total_ / self.width_
            self.variance_sum_ += self.width_ * (x - mean) ** 2 / (self.width_ + 1)
        self.width_ += 1
        self.total_ += x
        if not self.rows_:
            self.rows_.append([])
        self.rows_[0].append([x, 0.0])
        level = 0
        while len(self.rows_[level]) > self.max_buckets:
            (s1, v1), (s2, v2) = self.rows_[level].pop(0), self.rows_[level].pop(0)
            size = 2**level
            merged = [s1 + s2, v1 + v2 + size * size / (2 * size) * (s1 / size - s2 / size) ** 2]
            if level + 1 == len(self.rows_):
                self.rows_.append([])
            self.rows_[level + 1].append(merged)
            level += 1

    def _drop_oldest(self) -> None:
        level = len(self.rows_) - 1
        while not self.rows_[level]:
            level -= 1
        total, variance = self.rows_[level].pop(0)
        size = 2**level
        rest = self.width_ - size
        if rest:
            rest_mean = (self.total_ - total) / rest
            self.variance_sum_ -= variance + size * rest / self.width_ * (total / size - rest_mean) ** 2
            self.variance_sum_ = max(self.variance_sum_, 0.0)
        else:
            self.variance_sum_ = 0.0
        self.width_ = rest
        self.total_ -= total
        while self.rows_ and not self.rows_[-1]:
            self.rows_.pop()

    def _cut_once(self) -> bool:
        """Try every bucket boundary, oldest first; drop the oldest bucket if any split differs."""
        n, total = self.width_, self.total_
        if n <= self.grace_period:
            return False
        variance = self.variance_sum_ / n
        delta_prime = math.log(2.0 * math.log(n) / self.delta)
        n0, s0 = 0, 0.0
        for level in range(len(self.rows_) - 1, -1, -1):
            size = 2**level
            for bucket_sum, _ in self.rows_[level]:
                n0 += size
                s0 += bucket_sum
                n1 = n - n0
                if n1 < self.min_window_length:
                    return False
                if n0 < self.min_window_length:
                    continue
                m = 1.0 / (n0 - self.min_window_length + 1) + 1.0 / (n1 - self.min_window_length + 1)
                epsilon = math.sqrt(2.0 * m * variance * delta_prime) + 2.0 / 3.0 * delta_prime * m
                if abs(s0 / n0 - (total - s0) / n1) > epsilon:
                    self._drop_oldest()
                    return True
        return False
