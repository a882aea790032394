"""The ``request_features`` on-demand view: features of one (job, candidate) pair, at request time.

``feature_repo.request_transform.compute_request_features`` is the one definition of these
features. Training gets it through this view (Feast applies it to the point-in-time joined
frame); serving may get it the same way or call the function directly on the candidate frame it
built. It reads the member's job coordinates and returns only derived values: the view is never written
to the online store and feature services log nothing, so coordinates are not persisted.
"""

from __future__ import annotations

import pandas as pd
from feast import Field, RequestSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, String, UnixTimestamp

from contracts.features import REQUEST_FEATURES
from feature_repo.cell_features import cell_traffic
from feature_repo.provider_features import provider_status

# ``compute_request_features`` stays importable from here: registries applied before it moved to
# ``request_transform`` store a UDF text that imports it from this module.
from feature_repo.request_transform import STORED_REQUEST_INPUTS, compute_request_features  # noqa: F401

request_source = RequestSource(
    name="job_request",
    schema=[
        Field(name="job_id", dtype=String),
        Field(name="job_lat", dtype=Float64),
        Field(name="job_lon", dtype=Float64),
        Field(name="request_ts", dtype=UnixTimestamp),
        Field(name="line_of_business", dtype=String),
        Field(name="service_type", dtype=String),
        Field(name="vehicle_class", dtype=String),
    ],
    description="The job as the dispatch system received it. Holds member coordinates: never stored.",
)


@on_demand_feature_view(
    name="request_features",
    sources=[
        *(view[[name for name, group in STORED_REQUEST_INPUTS.items() if group == view.name]] for view in (provider_status, cell_traffic)),
        request_source,
    ],
    schema=[Field(name=name, dtype=Float64) for name in REQUEST_FEATURES],
    mode="pandas",
    write_to_online_store=False,
    description="Distance, bearing, naive travel time, time of day, category codes and rank per candidate.",
)
def request_features(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast rebuilds the UDF from this source text with only pandas and numpy in scope, so it
    # imports the shared function rather than closing over it.
    from feature_repo import request_transform

    return request_transform.compute_request_features(inputs)
