"""One feature service per model family, and the version of the definitions behind them.

Both models read every stored group plus the request view, so the two services list the same
views today; they are separate so either model can drop or add a view without touching the
other. ``FEATURE_DEFINITION_VERSION`` hashes the catalogue (groups, TTLs, features, vocabularies)
and the request-transformation revision; the model registry records it with each model so a
model is only ever served against the definitions it was trained on.
"""

from __future__ import annotations

import hashlib
import json

from feast import FeatureService

from contracts.features import (
    FEATURE_GROUPS,
    LINES_OF_BUSINESS,
    REQUEST_FEATURES,
    SERVICE_TYPES,
    VEHICLE_CLASSES,
)
from feature_repo.cell_features import cell_batch, cell_traffic
from feature_repo.provider_features import provider_batch, provider_status
from feature_repo.region_features import region_batch, region_load
from feature_repo.request_features import request_features
from feature_repo.request_transform import REQUEST_TRANSFORM_REVISION


def _definition_version() -> str:
    catalogue = {
        "groups": [
            {
                "name": g.name,
                "entity": g.entity,
                "cadence": g.cadence,
                "ttl_s": g.ttl.total_seconds(),
                "freshness_limit_s": g.freshness_limit.total_seconds(),
                "features": list(g.features),
            }
            for g in FEATURE_GROUPS
        ],
        "request_features": list(REQUEST_FEATURES),
        "vocabularies": [list(LINES_OF_BUSINESS), list(SERVICE_TYPES), list(VEHICLE_CLASSES)],
        "request_transform_revision": REQUEST_TRANSFORM_REVISION,
    }
    digest = hashlib.sha256(json.dumps(catalogue, sort_keys=True).encode()).hexdigest()
    return f"fd-{digest[:12]}"


#: Version of the feature definitions; changes whenever a served column could change meaning.
FEATURE_DEFINITION_VERSION: str = _definition_version()

_ALL_VIEWS = [provider_batch, cell_batch, region_batch, cell_traffic, provider_status, region_load, request_features]


def _tags(family: str) -> dict[str, str]:
    return {"model_family": family, "feature_definition_version": FEATURE_DEFINITION_VERSION}


eta_model = FeatureService(
    name="eta_model",
    features=list(_ALL_VIEWS),
    description="Inputs of the arrival-time (ETA) model.",
    tags=_tags("eta"),
)
acceptance_model = FeatureService(
    name="acceptance_model",
    features=list(_ALL_VIEWS),
    description="Inputs of the provider-acceptance model.",
    tags=_tags("acceptance"),
)

#: Feature service name per model family, as the training and serving code look them up.
FEATURE_SERVICES: dict[str, str] = {"eta": eta_model.name, "acceptance": acceptance_model.name}
