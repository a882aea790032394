"""Counter-based randomness: a value is a pure function of (seed, stream, keys).

The simulator never threads a stateful generator through time. Each random quantity is hashed
from what identifies it (a cell and a 5-minute bucket, a job and a candidate slot), so that
(1) any slice of time can be generated independently and streamed, and (2) a scenario that
changes one segment cannot shift the random draws anywhere else: the "changes only its
segment" property holds by construction. The mixer is SplitMix64 (Steele, Lea & Flood 2014,
"Fast splittable pseudorandom number generators").
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def hash_keys(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """A 64-bit hash of the seed, a stream id and any number of integer key arrays (broadcast)."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ (np.uint64(stream) * _M1)))
        for k in keys:
            h = _mix(h ^ np.asarray(k).astype(np.uint64))
    return h


def uniform(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """U(0, 1) open at both ends, from the top 53 bits of the hash."""
    h = hash_keys(seed, stream, *keys)
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def normal(seed: int, stream: int, *keys: np.ndarray | int) -> np.ndarray:
    """N(0, 1) by Box-Muller on two hashed uniforms."""
    u1 = uniform(seed, stream, *keys)
    u2 = uniform(seed, stream + 0x5BD1E995, *keys)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def choice_index(u: np.ndarray, cumulative: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw: index into categories with the given cumulative probabilities."""
    return np.minimum(np.searchsorted(cumulative, u, side="right"), len(cumulative) - 1)


class Stream:
    """Named stream ids so two quantities never share draws by accident."""

    DEMAND_CELL = 1
    JOB_OFFSET = 2
    JOB_LOB = 3
    JOB_SERVICE = 4
    JOB_VEHICLE = 5
    JOB_MEMBER = 6
    JOB_MINUTE = 7
    CAND_START = 8
    CAND_STEP = 9
    TRAFFIC = 10
    WEATHER = 11
    REGION_DAY = 12
    PROVIDER_POS = 13
    PROVIDER_QUEUE = 14
    PROVIDER_SHIFT = 15
    PROVIDER_IDLE = 16
    PROVIDER_OFFERS = 17
    REGION_LOAD = 18
    ACCEPT = 19
    ETA_NOISE = 20
    OFFER_DELAY = 21
    REASSIGN = 22
    CANCEL = 23
    LABEL_DELAY = 24
    GPS_NOISE = 25
    OVERRIDE = 26
    CORRECTION = 27
    CORRECTION_DELAY = 28
    RESPONSE_DELAY = 29
    INCIDENTS = 30
    WORLD = 31
    NEW_LOB = 32
    FEED_LAG = 33
