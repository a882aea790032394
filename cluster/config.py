"""The one settings object, loaded from one YAML file with ``DISPATCHML__`` environment overrides.

Defaults describe the embedded single-machine setup (local Ray, Feast on SQLite, files under
``./var``). A cluster is a different YAML file, not a code change: see ``cluster/cluster.yaml``.

Environment overrides use ``DISPATCHML__SECTION__FIELD=value`` (double underscores), e.g.
``DISPATCHML__FEATURES__ONLINE_STORE=redis``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")
ENV_PREFIX = "DISPATCHML__"
CONFIG_ENV = "DISPATCHML_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PathsSettings(_Section):
    """Roots of everything the system writes. On a cluster these point at shared storage."""

    root: Path = Path("var")
    data: Path = Path("var/data")
    registry: Path = Path("var/registry")
    feature_store: Path = Path("var/feature_store")
    reports: Path = Path("var/reports")
    #: The append-only event log of model-quality events and actions (``cluster/event_log.py``).
    events: Path = Path("var/events")


class WorldSettings(_Section):
    """Size of the simulated world. Production scale is the default; the demo shrinks it."""

    cells: int = 25_000
    regions: int = 40
    providers: int = 80_000
    candidates_per_job: int = 6


class SimulationSettings(_Section):
    days: int = 60
    events_per_day: int = 1_200_000
    seed: int = 7
    start: str = "2026-01-01"


class FeatureSettings(_Section):
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection: str = "127.0.0.1:6379"
    project: str = "dispatchml"


class TrainSettings(_Section):
    """Training window and LightGBM capacity; the holdout is the last ``holdout_days`` days."""

    holdout_days: int = 7
    window_days: int = 56
    num_boost_round: int = 300
    num_leaves: int = 63
    learning_rate: float = 0.05
    max_training_rows: int = 400_000
    interval_coverage: float = 0.8
    #: Requests this recent are left out of training and holdout: their labels are not final.
    label_maturity_hours: int = 12
    #: LightGBM threads; set to the cores the job reserves (0 = OpenMP default, all cores).
    #: More threads than free cores makes OpenMP spin and fitting many times slower.
    num_threads: int = 0


class ServingSettings(_Section):
    """The scoring service. ``host`` stays on loopback unless a deployment says otherwise."""

    host: str = "127.0.0.1"
    port: int = 8000
    router_replicas: int = 1
    model_replicas: int = 1
    #: Ray Serve's HAProxy ingress: ~2,800 req/s vs ~370 for the Python proxy, measured here.
    ha_proxy: bool = True
    #: Dollars per CPU-second, for the cost-per-1,000-predictions metric.
    price_per_cpu_second: float = 0.0000135


class ServiceSlo(_Section):
    """One service SLO on the score endpoint: the share of good requests over the SLO period.

    ``availability``: good = answered without a 5xx. ``latency``: good = answered within
    ``threshold_seconds``, which must be a bound of the request-duration histogram
    (``serve_apps.metrics.REQUEST_DURATION_BUCKETS``) so the ratio is exact.
    """

    kind: Literal["availability", "latency"]
    objective: float = Field(gt=0.0, lt=1.0)
    threshold_seconds: float | None = None


class SloSettings(_Section):
    """Service SLOs over a 30-day period (the burn-rate factors of ``eval.burn_rate`` assume it).

    ``cluster/alert_rules.py`` turns them into Prometheus rules (``dispatchml alerts render``).
    """

    endpoint: str = "/v1/dispatch/score"
    #: Alerts link ``<runbook_base_url>#<alert name in lower case>``; point it at the README your operators read.
    runbook_base_url: str = "README.md"
    service: dict[str, ServiceSlo] = Field(
        default_factory=lambda: {
            "availability": ServiceSlo(kind="availability", objective=0.999),
            "latency": ServiceSlo(kind="latency", objective=0.99, threshold_seconds=0.12),
        }
    )


class RetrainSettings(_Section):
    """Retraining on Ray Tune (``dispatchml retrain``) and the offline gate against the champion.

    The window is every row of the last ``recent_days`` before the holdout plus a job-complete
    ``history_fraction`` sample of the ``history_days`` before those (``retrain.tune``), so a
    drifted region is learned from fresh rows without forgetting the rest of the year.
    """

    recent_days: int = Field(14, ge=1)
    history_days: int = Field(42, ge=0)
    history_fraction: float = Field(0.25, ge=0.0, le=1.0)
    #: The time-later slice of the training rows that LightGBM early-stops on and Tune ranks trials by.
    validation_days: int = Field(2, ge=1)
    #: Trials per model family (ETA, acceptance): each samples the search space once.
    trials: int = Field(8, ge=1)
    #: One CPU and one LightGBM thread per trial; 2 fill this 2-core machine.
    max_concurrent_trials: int = Field(2, ge=1)
    max_boost_round: int = Field(600, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    #: Trials report every this many boosting rounds; ASHA's rungs count reports.
    report_every: int = Field(10, ge=1)
    asha_grace_reports: int = Field(3, ge=1)
    seed: int = 0
    #: Gate: segments with fewer holdout rows than this are listed but not judged.
    gate_min_rows: int = Field(200, ge=1)
    #: Gate: largest allowed relative rise of a segment's ETA MAE / acceptance log loss.
    eta_mae_tolerance: float = Field(0.03, ge=0.0)
    log_loss_tolerance: float = Field(0.02, ge=0.0)
    #: Gate: largest allowed relative rise of the overall metrics (0 = must not regress).
    overall_tolerance: float = Field(0.0, ge=0.0)
    #: Gate: a rise beyond tolerance fails only if a one-sided paired z-test is significant at this level.
    gate_confidence: float = Field(0.95, gt=0.5, lt=1.0)


class Settings(_Section):
    paths: PathsSettings = Field(default_factory=PathsSettings)
    world: WorldSettings = Field(default_factory=WorldSettings)
    simulation: SimulationSettings = Field(default_factory=SimulationSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    slo: SloSettings = Field(default_factory=SloSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        node = tree
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_settings(path: Path | str | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Settings from ``path`` (or ``$DISPATCHML_CONFIG``, or the packaged default) plus env overrides."""
    environ = dict(os.environ) if environ is None else environ
    path = Path(path or environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist; pass --config or set {CONFIG_ENV}")
    raw = yaml.safe_load(path.read_text()) or {}
    return Settings.model_validate(_merge(raw, _env_overrides(environ)))
