"""The one settings object, loaded from one YAML file with ``DISPATCHML__`` environment overrides.

Defaults describe the embedded single-machine setup (local Ray, Feast on SQLite, files under
``./var``). A cluster is a different YAML file, not a code change: see ``cluster/cluster.yaml``.

Environment overrides use ``DISPATCHML__SECTION__FIELD=value`` (double underscores), e.g.
``DISPATCHML__FEATURES__ONLINE_STORE=redis``.
"""

from __future__ import annotations

import os
from datetime import datetime
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
    #: Prediction-log rows a router replica holds while the log disk refuses writes; past it,
    #: new requests' rows are refused whole and counted (``prediction_log_rows_dropped``).
    log_max_backlog_rows: int = 200_000
    #: The replica's near-real-time feature cache reloads the entities requested since its last
    #: reload every ``nrt_refresh_s`` and every entity every ``nrt_full_refresh_s`` (wall seconds).
    nrt_refresh_s: float = Field(5.0, gt=0.0)
    nrt_full_refresh_s: float = Field(60.0, gt=0.0)
    #: Daily groups change once a day; the cache reloads them every ``batch_refresh_s``.
    batch_refresh_s: float = Field(300.0, gt=0.0)
    #: Replays only (``dispatchml demo``): the service's clock runs ``replay_speed`` times the wall
    #: clock from the simulated instant ``replay_start`` once the replay starts it
    #: (``serve_apps.clock``). 1, the default, is the wall clock.
    replay_speed: float = Field(1.0, ge=1.0)
    replay_start: datetime | None = None


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


class MonitorSettings(_Section):
    """The model-quality monitor (``cluster/monitor.py``): windows, reference and check thresholds.

    Counts are folded into ``bin_seconds`` bins per segment; drift histograms into
    ``drift_bin_seconds`` bins per region. Every threshold a check fires on is here.
    """

    bin_seconds: int = 300
    drift_bin_seconds: int = 3600
    #: Windows the checks and gauges are evaluated on (seconds); 5 min to 30 days.
    windows: dict[str, int] = Field(
        default_factory=lambda: {"5m": 300, "1h": 3600, "6h": 21600, "1d": 86400, "7d": 604800, "30d": 2592000}
    )
    #: Sums older than this are dropped from the monitor's state.
    retention_days: int = 35
    #: The drift reference: the first ``reference_hours`` of the log, sampled to at most ``reference_rows``.
    reference_hours: int = 24
    reference_rows: int = 50_000
    seed: int = 7
    #: Data quality: windows and thresholds (ratios of values; page severity).
    quality_windows: list[str] = Field(default_factory=lambda: ["1h", "6h"])
    min_quality_values: int = 200
    max_null_ratio: float = 0.05
    max_out_of_range_ratio: float = 0.02
    max_stale_share_near_real_time: float = 0.2
    max_stale_share_batch: float = 0.2
    #: Volume ratio vs the same window a week earlier must stay within [min, max].
    min_volume_ratio: float = 0.3
    max_volume_ratio: float = 3.0
    #: Feature and prediction drift per region (ticket): PSI above both this and
    #: ``psi_bias_multiple`` x its no-drift expectation, chi-square BH q-value below ``drift_fdr``.
    drift_windows: list[str] = Field(default_factory=lambda: ["1d"])
    #: Groups whose drift raises events: the pushed ones. Batch groups are recomputed daily from
    #: history and move with it; their per-cell drift is the drift scan's job.
    drift_groups: list[str] = Field(default_factory=lambda: ["cell_traffic", "provider_status", "region_load"])
    psi_threshold: float = 3.0
    psi_bias_multiple: float = 4.0
    drift_fdr: float = 0.01
    #: Observations per column and side before a test: candidate rows, or jobs for the job-level
    #: groups (the job's cell and region), whose value every candidate row of a job repeats.
    min_drift_rows: int = 100
    #: A drift finding becomes a ticket only once it has fired at every pass for this long.
    drift_persistence_hours: float = 12.0
    #: Concept drift per region: Page-Hinkley on the matured "arrived after the interval" indicator
    #: (scale-free: ~0.1 for an 80 % interval whatever the region's spread), ADWIN on the residuals.
    page_hinkley_threshold: float = 5.0
    page_hinkley_delta: float = 0.05
    page_hinkley_min_instances: int = 20
    adwin_delta: float = 0.0005
    #: Labels: completeness the watermark waits for, and the longest wait (hours).
    label_completeness: float = 0.95
    label_horizon_hours: int = 12
    #: Model-quality SLOs (objectives over 30 days), evaluated with eval.burn_rate on matured labels.
    eta_interval_objective: float = 0.6
    top_rank_accepted_objective: float = 0.3
    min_slo_events: int = 20
    #: Calibration of p_accept per region (ticket): ECE above this on at least ``min_calibration_rows``.
    max_ece: float = 0.15
    min_calibration_rows: int = 200
    calibration_window: str = "1d"
    #: Training-serving skew (``eval.skew``) of the served features vs the warehouse, per region,
    #: over the last ``skew_window_hours`` every ``skew_every_hours`` of data (0 = off). A served
    #: feature that differs from what training sees (a unit bug in a push feed) pages as data quality.
    skew_every_hours: int = 6
    skew_window_hours: int = 6
    #: Prometheus exposition of the monitor's gauges (loopback).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9108


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


class ReleaseSettings(_Section):
    """The release controller (``retrain/release.py``): shadow, canary steps, promotion, rollback.

    The test is ``eval.sequential`` on matured labels; margins are non-inferiority tolerances
    (challenger minus champion, per job). Guardrails compare the challenger's own rows with the
    champion's over the same period.
    """

    canary_steps: list[float] = Field(default_factory=lambda: [0.05, 0.25, 0.5])
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    #: Matured jobs per metric before the test may decide; the sequence is tightest at ``target_samples``.
    min_samples: int = Field(default=200, ge=2)
    target_samples: int = Field(default=2000, ge=1)
    #: At the last step, a test still undecided after this many jobs is rolled back as inconclusive.
    max_samples: int = Field(default=50_000, ge=1)
    eta_margin_minutes: float = Field(default=0.25, ge=0.0)
    acceptance_margin: float = Field(default=0.01, ge=0.0)
    #: Challenger requests (shadow or served) at a step before moving on from it.
    min_requests_per_step: int = Field(default=2000, ge=1)
    #: Requests per arm before a guardrail or the arm's burn rate is evaluated.
    min_guardrail_requests: int = Field(default=200, ge=1)
    #: p99 latency trips above max(the latency SLO threshold, champion p99 x (1 + tolerance)).
    latency_tolerance: float = Field(default=0.2, ge=0.0)
    #: Error/timeout and fallback shares trip above the champion's plus these (absolute).
    error_share_tolerance: float = Field(default=0.005, ge=0.0)
    fallback_share_tolerance: float = Field(default=0.01, ge=0.0)
    #: A newly promoted champion is watched (burn rate, rollback) this long.
    probation_hours: float = Field(default=24.0, ge=0.0)
    #: Label maturity: ``eval.labels.completeness_watermark`` with this horizon and completeness.
    label_horizon_hours: float = Field(default=12.0, gt=0.0)
    label_completeness: float = Field(default=0.95, gt=0.0, le=1.0)
    #: Bin width of the per-arm burn-rate series (``eval.burn_rate.alert_levels``).
    burn_bin_seconds: int = Field(default=300, ge=1)


class Settings(_Section):
    paths: PathsSettings = Field(default_factory=PathsSettings)
    world: WorldSettings = Field(default_factory=WorldSettings)
    simulation: SimulationSettings = Field(default_factory=SimulationSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    slo: SloSettings = Field(default_factory=SloSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    retrain: RetrainSettings = Field(default_factory=RetrainSettings)
    release: ReleaseSettings = Field(default_factory=ReleaseSettings)


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
