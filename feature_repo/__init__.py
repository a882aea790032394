"""Feast definitions for dispatch features, and nothing else.

Laid out like Feast's local template (``feast-dev/feast``,
``sdk/python/feast/templates/local/feature_repo/``), grouped by entity:

- ``entities.py``: provider, cell and region, each joined on an int64 key.
- ``group_views.py``: how a catalogue group (``contracts.features``) becomes a file source, an
  optional push source and a feature view. Feature names come from the catalogue only.
- ``provider_features.py``, ``cell_features.py``, ``region_features.py``: one daily batch view
  and one near-real-time push view per entity.
- ``request_features.py``: the per-(job, candidate) on-demand view; the pure pandas function
  behind it, which training (through Feast), serving and the backtest share, is in
  ``request_transform.py`` (no Feast import).
- ``feature_services.py``: one feature service per model family, plus
  ``FEATURE_DEFINITION_VERSION`` for the model registry.

The sources read the warehouse under the data root named by the ``DISPATCHML_DATA_ROOT``
environment variable (default ``var/data``, resolved against the working directory). The
operator code in ``cluster/feature_store.py`` sets it from ``Settings.paths.data`` before it
loads these modules and applies them; the resolved paths are then stored in the Feast registry,
so readers of the store never need the variable.
"""
