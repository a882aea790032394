"""Cell features: daily ETA and demand history (``cell_batch``) and pushed traffic (``cell_traffic``)."""

from __future__ import annotations

from contracts.features import CELL_BATCH, CELL_TRAFFIC
from feature_repo.group_views import batch_view, push_view

cell_batch = batch_view(CELL_BATCH)
cell_traffic_push, cell_traffic = push_view(CELL_TRAFFIC)
