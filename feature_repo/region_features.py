"""Region features: daily history (``region_batch``) and pushed load (``region_load``)."""

from __future__ import annotations

from contracts.features import REGION_BATCH, REGION_LOAD
from feature_repo.group_views import batch_view, push_view

region_batch = batch_view(REGION_BATCH)
region_load_push, region_load = push_view(REGION_LOAD)
