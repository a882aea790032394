"""Page-Hinkley test for a change in the mean of a stream (Page 1954).

E. S. Page, "Continuous inspection schemes", Biometrika 41(1/2), 1954, pp. 100-115; in the form
river implements (``river.drift.PageHinkley``, Gama et al., "A survey on concept drift
adaptation", ACM CSUR 2014, section 3.2). For each value ``x_t``, with ``x̄_t`` the running mean
of the values since the last reset, the two one-sided cumulative statistics are::

    G_t = max(0, alpha * G_{t-1} + (x_t - x̄_t - delta))      (the mean went up)
    H_t = max(0, alpha * H_{t-1} + (x̄_t - x_t - delta))      (the mean went down)

With ``alpha = 1``, ``G_t`` equals ``U_t - min_{s<=t} U_s`` for the cumulative sum
``U_t = Σ (x_s - x̄_s - delta)`` (Page's statistic; river's ``PageHinkley`` writes it that way).
The clamped form is what lets the forgetting factor ``alpha < 1`` discount old evidence: applied
to the unclamped ``U_t`` instead, it turns ``U`` into an AR(1) process whose excursions below its
own minimum cross any threshold on a long stationary stream. A change is signalled, once at least
``min_instances`` values have been seen, when ``G_t > threshold`` or ``H_t > threshold``
according to ``mode``. After a signal the detector resets (the next value starts a fresh mean).

Parameters (river's defaults):

- ``min_instances`` = 30: values needed before a change can be signalled.
- ``delta`` = 0.005: the magnitude of change tolerated per value (drift allowance).
- ``threshold`` = 50.0: ``lambda``; larger means fewer false alarms and later detection.
- ``alpha`` = 0.9999: forgetting factor on the cumulative sums (1 means none).
- ``mode``: ``"up"``, ``"down"`` or ``"both"``.

On matured ETA residuals (``arrival - eta`` in minutes) the monitor uses ``mode="up"``: arrivals
later than promised are what a slower road network (concept drift) produces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np

Mode = Literal["up", "down", "both"]


class PageHinkley:
    """Page-Hinkley change detector; ``update(x)`` returns True on the value that signals a change."""

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: Mode = "both",
    ) -> None:
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode

    def _reset(self) -> None:
        self.n_ = 0
        self.mean_ = 0.0
        self.sum_increase_ = 0.0
        self.sum_decrease_ = 0.0

    @property
    def statistic_(self) -> float:
        """The larger of the two test statistics now (compare with ``threshold``)."""
        self._ensure_state()
        up = self.sum_increase_ if self.mode != "down" else 0.0
        down = self.sum_decrease_ if self.mode != "up" else 0.0
        return max(up, down)

    def _ensure_state(self) -> None:
        if not hasattr(self, "n_"):
            if self.mode not in ("up", "down", "both"):
                raise ValueError(f"mode must be 'up', 'down' or 'both', got {self.mode!r}")
            self._reset()
            self.detections_ = 0
            self.seen_ = 0

    def update(self, x: float) -> bool:
        """Fold one value in; True if it signals a change (the detector then resets)."""
        self._ensure_state()
        x = float(x)
        if not np.isfinite(x):
            raise ValueError(f"Page-Hinkley takes finite values, got {x}")
        self.seen_ += 1
        self.n_ += 1
        self.mean_ += (x - self.mean_) / self.n_
        deviation = x - self.mean_
        self.sum_increase_ = max(0.0, self.alpha * self.sum_increase_ + deviation - self.delta)
        self.sum_decrease_ = max(0.0, self.alpha * self.sum_decrease_ - deviation - self.delta)
        if self.n_ < self.min_instances:
            return False
        up = self.mode != "down" and self.sum_increase_ > self.threshold
        down = self.mode != "up" and self.sum_decrease_ > self.threshold
        if up or down:
            self.detections_ += 1
            self._reset()
            return True
        return False

    def update_many(self, xs: Iterable[float]) -> np.ndarray:
        """Fold a sequence in order; the indices (into ``xs``) of the values that signalled a change."""
        return np.flatnonzero(np.fromiter((self.update(x) for x in np.asarray(xs, dtype=np.float64)), dtype=bool))
