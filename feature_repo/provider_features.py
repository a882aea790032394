"""Provider features: daily history (``provider_batch``) and pushed status (``provider_status``)."""

from __future__ import annotations

from contracts.features import PROVIDER_BATCH, PROVIDER_STATUS
from feature_repo.group_views import batch_view, push_view

provider_batch = batch_view(PROVIDER_BATCH)
provider_status_push, provider_status = push_view(PROVIDER_STATUS)
