"""Deterministic, job-complete row caps for training frames.

Whole jobs, because the candidate rank and candidate count are features of a job's full
candidate set: a job split between kept and dropped rows would carry features that describe
rows the model never sees. The choice is a hash of ``job_id``, so the same frame gives the same
sample on every run, whatever its row order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def cap_rows(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``frame``, keeping whole jobs with the smallest ``job_id`` hashes."""
    if len(frame) <= max_rows:
        return frame
    job_hash = pd.util.hash_pandas_object(frame["job_id"], index=False).to_numpy()
    threshold = np.sort(job_hash)[max_rows]
    return frame.loc[job_hash < threshold]
