"""``dispatchml``: the one operator command. Each subcommand parses, calls a library function, prints.

Errors print one line and exit non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cluster.config import Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Roadside dispatch ML: simulate, features, train, registry, demo.")
features_app = typer.Typer(no_args_is_help=True, help="Feast feature repo: apply definitions, materialize to the online store.")
models_app = typer.Typer(no_args_is_help=True, help="Model registry: versions and aliases.")
serve_app = typer.Typer(no_args_is_help=True, help="The scoring service on local Ray: up, down, status.")
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")
app.add_typer(serve_app, name="serve")
alerts_app = typer.Typer(no_args_is_help=True, help="Service SLO monitoring: Prometheus rules, scrape config, Grafana dashboards.")
app.add_typer(alerts_app, name="alerts")

console = Console()
_state: dict[str, Any] = {"debug": False, "config": None}


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


def _settings() -> Settings:
    return load_settings(_state["config"])


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns exceptions into one clear line and exit code 1 unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            if _state["debug"]:
                raise
            console.print(f"[red]error:[/red] {escape(f'{type(exc).__name__}: {exc}')}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


@app.callback()
def main(
    config: Annotated[Path | None, typer.Option("--config", help="Settings YAML (default: embedded single machine).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    _state["config"] = config
    _state["debug"] = debug


@app.command()
@command
def simulate(
    out: Annotated[Path, typer.Option(help="Warehouse directory to write.")],
    days: Annotated[int, typer.Option(min=1, help="Days to simulate.")] = 7,
    events_per_day: Annotated[int, typer.Option(min=100, help="Dispatch events per day (1.2M is production).")] = 1_200_000,
    seed: Annotated[int, typer.Option(help="Same seed, same world and events.")] = 7,
    start: Annotated[str, typer.Option(help="First simulated day, YYYY-MM-DD (UTC).")] = "2026-01-01",
    scenario: Annotated[Path | None, typer.Option(help="Incident scenario YAML.")] = None,
    cells: Annotated[int | None, typer.Option(help="Override the world's cell count.")] = None,
    regions: Annotated[int | None, typer.Option(help="Override the world's region count.")] = None,
    providers: Annotated[int | None, typer.Option(help="Override the world's provider count.")] = None,
) -> None:
    """Simulate dispatch history into date-partitioned parquet."""
    from simulator.run import SimulationSpec
    from simulator.run import simulate as run_simulation
    from simulator.scenarios import Scenario

    world = _settings().world
    spec = SimulationSpec(
        out=out,
        days=days,
        events_per_day=events_per_day,
        seed=seed,
        start=date.fromisoformat(start),
        cells=cells or world.cells,
        regions=regions or world.regions,
        providers=providers or world.providers,
        candidates_per_job=world.candidates_per_job,
        scenario=Scenario.load(scenario),
    )
    with progress_bar() as bar:
        task = bar.add_task("simulating hours", total=days * 24)
        manifest = run_simulation(spec, progress=lambda done, total: bar.update(task, completed=done))
    rate = manifest.events / max(manifest.seconds, 1e-9)
    console.print(
        f"wrote {manifest.events:,} events for {manifest.jobs:,} jobs over {days} days to {out} "
        f"in {manifest.seconds:.1f} s ({rate:,.0f} events/s); scenario {spec.scenario.name!r}"
    )


def _utc_datetime(text: str | None) -> datetime | None:
    if text is None:
        return None
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@features_app.command("apply")
@command
def features_apply() -> None:
    """Register the feature_repo definitions with Feast and create the online tables."""
    from cluster.feature_store import apply

    result = apply(_settings())
    console.print(
        f"applied {len(result.feature_views)} feature views, {len(result.on_demand_feature_views)} on-demand views, "
        f"feature services {', '.join(result.feature_services)} (definitions {result.feature_definition_version}) "
        f"to {result.repo_path} over {result.data_root} in {result.seconds:.1f} s"
    )


@features_app.command("materialize")
@command
def features_materialize(
    end: Annotated[str | None, typer.Option(help="Materialize up to this UTC time (default: end of the data).")] = None,
    start: Annotated[str | None, typer.Option(help="Earliest value to load (default: end minus each view's TTL).")] = None,
    group: Annotated[list[str] | None, typer.Option(help="Only these feature groups (repeatable).")] = None,
) -> None:
    """Load the latest feature values into the online store, one feature view at a time."""
    from retrain.pipeline import data_span

    settings = _settings()
    span_start, span_end = data_span(Path(settings.paths.data))
    end_at = _utc_datetime(end) or span_end
    start_at = _utc_datetime(start) or span_start
    steps = materialize_with_progress(settings, start_at, end_at, group)
    for step in steps:
        console.print(f"  {step}")


def materialize_with_progress(settings: Settings, start: datetime, end: datetime, groups: list[str] | None = None) -> list[Any]:
    from cluster.feature_store import materialize
    from contracts.features import FEATURE_GROUPS

    total = len(groups) if groups else len(FEATURE_GROUPS)
    with progress_bar() as bar:
        task = bar.add_task("materializing feature views", total=total)
        return materialize(settings, start, end, groups=groups, progress=lambda *_: bar.advance(task))


@app.command()
@command
def train(
    data: Annotated[Path | None, typer.Option(help="Warehouse root (default: paths.data).")] = None,
    as_of: Annotated[str | None, typer.Option(help="Use labels known by this UTC time (default: end of the data).")] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias (champion, challenger) at the new versions.")] = None,
) -> None:
    """Build point-in-time training sets, fit ETA/acceptance/fallback, report holdout metrics, register."""
    from retrain.pipeline import train_from_warehouse

    settings = _settings()
    with console.status("training") as status:
        run = train_from_warehouse(settings, data, as_of=_utc_datetime(as_of), set_alias=alias, step=status.update)
    report_training(run)


def report_training(run: Any) -> None:
    """Overall holdout metrics, the worst segment per metric family, and the registered versions."""
    result = run.result
    rows = [[family, metric, f"{value:.4f}"] for family, values in result.metrics.items() for metric, value in values.items()]
    print_table(f"holdout metrics ({run.rows:,} candidate rows, window {run.window[0]:%Y-%m-%d}..{run.window[1]:%Y-%m-%d})", ["family", "metric", "value"], rows)
    seg_rows = []
    for family, by_column in result.segment_metrics.items():
        for column, by_value in by_column.items():
            for value, metrics in sorted(by_value.items(), key=lambda kv: str(kv[0]))[:50]:
                headline = {k: v for k, v in metrics.items() if k in ("mae", "ece", "coverage", "auc", "n")}
                if headline:
                    seg_rows.append([family, column, value, ", ".join(f"{k}={v:.3f}" for k, v in headline.items())])
    print_table("holdout metrics per segment", ["family", "segment", "value", "metrics"], seg_rows)
    print_table("registered versions", ["family", "version"], [[f, v] for f, v in run.versions.items()])


@app.command()
@command
def retrain(
    trigger: Annotated[str | None, typer.Option(help="Id of the event-log event that triggered this retrain.")] = None,
    recent_days: Annotated[int | None, typer.Option(help="Days of recent rows, all kept (default: retrain.recent_days).")] = None,
    history_days: Annotated[int | None, typer.Option(help="Older days sampled at retrain.history_fraction (default: retrain.history_days).")] = None,
    trials: Annotated[int | None, typer.Option(help="Ray Tune trials per model (default: retrain.trials).")] = None,
    as_of: Annotated[str | None, typer.Option(help="Use labels known by this UTC time (default: end of the data).")] = None,
) -> None:
    """Ray Tune search on a recent+history window, gate against the champion, register the candidate."""
    from retrain.pipeline import retrain_from_warehouse

    with console.status("retraining") as status:
        run = retrain_from_warehouse(
            _settings(), trigger=trigger, as_of=_utc_datetime(as_of), recent_days=recent_days,
            history_days=history_days, trials=trials, step=status.update,
        )
    report_retrain(run)


def report_retrain(run: Any) -> None:
    """Best trial per model, the gate table (judged segments), the registered versions and the timing."""
    print_table("best Ray Tune trial per model", ["model", "trial", "validation loss", "rounds", "config"], [
        [f, s.best.trial_id, f"{s.metric} {s.best.validation_loss:.4f}", s.best.best_iteration,
         ", ".join(f"{k}={v:.3g}" for k, v in s.best.config.items())]
        for f, s in run.searches.items()
    ])
    if run.gate is None:
        console.print("gate: no champion to compare with")
    else:
        checks = [c for c in run.gate.checks if c.verdict != "ignored"]
        print_table(f"gate vs champion {run.champion}: {run.gate.reason}", ["metric", "segment", "rows", "champion", "candidate", "change", "z", "verdict"], [
            [c.metric, f"{c.segment}={c.value}", c.rows, f"{c.champion:.4f}", f"{c.candidate:.4f}", f"{c.relative_change:+.1%}", f"{c.z:.1f}", c.verdict]
            for c in checks
        ])
    print_table(f"registered (trigger {run.trigger}, alias {run.alias or 'none'})", ["family", "version"], [[f, v] for f, v in run.versions.items()])
    console.print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in run.seconds.items()))


@models_app.command("list")
@command
def models_list(family: Annotated[str | None, typer.Option(help="Only this family.")] = None) -> None:
    """Versions per family and where each alias points."""
    from retrain.registry import ALIASES, FAMILIES, ModelRegistry

    registry = ModelRegistry(_settings().paths.registry)
    rows = []
    for fam in [family] if family else FAMILIES:
        targets = {a: (registry.alias(fam, a) or None) for a in ALIASES}
        for version in registry.versions(fam):
            marks = [a for a, rec in targets.items() if rec is not None and rec.version == version]
            meta = registry.metadata(fam, version)
            rows.append([fam, version, ",".join(marks), f"{meta.created_at:%Y-%m-%d %H:%M}", meta.parent_version or ""])
    print_table(f"models in {registry.root}", ["family", "version", "aliases", "created", "parent"], rows)


@models_app.command("show")
@command
def models_show(family: str, ref: Annotated[str, typer.Argument(help="Version id or alias.")]) -> None:
    """A version's metadata: window, data fingerprint, features, hyperparameters, metrics, lineage."""
    from retrain.registry import ModelRegistry

    print_json(ModelRegistry(_settings().paths.registry).metadata(family, ref).model_dump(mode="json"))


@models_app.command("alias")
@command
def models_alias(
    family: str,
    alias: str,
    version: Annotated[str | None, typer.Argument(help="Version to point at; omit with --rollback.")] = None,
    rollback: Annotated[bool, typer.Option(help="Restore the alias's previous target.")] = False,
    reason: Annotated[str, typer.Option(help="Recorded in the alias history.")] = "manual",
    history: Annotated[bool, typer.Option(help="Print the alias's move history and exit.")] = False,
) -> None:
    """Move an alias atomically (recorded in history), roll it back, or show its history."""
    import getpass

    from retrain.registry import ModelRegistry

    registry = ModelRegistry(_settings().paths.registry)
    if history:
        moves = registry.history(family, alias)
        print_table(f"{family}@{alias} history", ["when", "action", "version", "previous", "by", "reason"],
                    [[f"{m.moved_at:%Y-%m-%d %H:%M:%S}", m.action, m.version, m.previous_version or "", m.moved_by, m.reason] for m in moves])
        return
    who = getpass.getuser()
    if rollback:
        record = registry.rollback(family, alias, moved_by=who, reason=reason)
    elif version is None:
        raise UserError("give a VERSION to point the alias at, or --rollback")
    else:
        record = registry.set_alias(family, alias, version, moved_by=who, reason=reason)
    console.print(f"{family}@{alias} -> {record.version} (was {record.previous_version}, generation {record.generation})")


class _RichReporter:
    """Progress bars and step lines for the demo."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, Any] = {}

    def step(self, text: str) -> None:
        console.print(f"[bold cyan]>[/bold cyan] {text}")

    def progress(self, label: str, total: int) -> Callable[[int, int], None]:
        task = self.bar.add_task(label, total=total)
        return lambda done, _total: self.bar.update(task, completed=done)

    def live_started(self, settings: Any) -> None:
        from cluster.live_view import LiveView

        self.bar.stop()
        self.view = LiveView(settings, console=console)
        self.view.__enter__()

    def loop_step(self, step: Any) -> None:
        for event in step.events:
            if event.state == "firing" and event.severity == "page":
                segment = ", ".join(f"{k}={v}" for k, v in sorted(event.segment.items()))
                console.print(f"[bold red]page[/bold red] {event.observed_at:%H:%M} {event.kind} {segment} {event.subject}")
        for action in step.actions:
            if action.action != "page":
                console.print(f"[bold yellow]action[/bold yellow] {action.decided_at:%H:%M} {action.action} {action.status} ({action.reason.split(':', 1)[0]})")

    def live_finished(self) -> None:
        if getattr(self, "view", None) is not None:
            self.view.__exit__(None, None, None)
            self.view = None
        self.bar.start()


@app.command()
@command
def demo(
    workdir: Annotated[Path | None, typer.Option(help="Demo directory, wiped first (default: <paths.root>/demo).")] = None,
    days: Annotated[int, typer.Option(min=14, help="Days of history to simulate.")] = 60,
    events_per_day: Annotated[int, typer.Option(min=1000, help="Dispatch events per simulated day.")] = 25_000,
    cells: Annotated[int, typer.Option(min=50)] = 2_500,
    regions: Annotated[int, typer.Option(min=1)] = 12,
    providers: Annotated[int, typer.Option(min=100)] = 8_000,
    seed: Annotated[int, typer.Option()] = 7,
    scenario: Annotated[Path | None, typer.Option(help="Incident scenario YAML (start_day from the first simulated day; default scenarios/live_day.yaml on the live day).")] = None,
    live: Annotated[bool, typer.Option(help="Replay the day after the history through the running service.")] = True,
    live_start_hour: Annotated[float, typer.Option(min=0.0, max=23.0, help="Hour of the live day the replay starts at.")] = 5.0,
    live_hours: Annotated[float, typer.Option(min=1.0, max=24.0, help="Simulated hours of the live replay.")] = 8.0,
    speed: Annotated[float, typer.Option(min=1.0, help="Simulated seconds per wall second of the live replay.")] = 96.0,
    outage_hour: Annotated[float | None, typer.Option(help="Hour of the live day the online store goes down for 45 minutes.")] = 10.0,
    outage: Annotated[bool, typer.Option(help="Take the online store down for an hour of the live day.")] = True,
    keep_running: Annotated[bool, typer.Option(help="Leave the service up after the live day (dispatchml serve down stops it).")] = False,
) -> None:
    """A day in the life: simulate, features, train and register, then a live day through the running service."""
    from cluster.demo import DemoOptions, run_demo

    settings = _settings()
    options = DemoOptions(
        workdir=workdir or Path(settings.paths.root) / "demo",
        days=days,
        events_per_day=events_per_day,
        cells=cells,
        regions=regions,
        providers=providers,
        seed=seed,
        scenario=scenario,
        live=live,
        live_start_hour=live_start_hour,
        live_hours=live_hours,
        speed=speed,
        outage_hour=outage_hour if outage else None,
        keep_running=keep_running,
    )
    with progress_bar() as bar:
        result = run_demo(settings, options, _RichReporter(bar))
    m = result.manifest
    console.print(f"\n[bold]simulated[/bold] {m.events:,} events, {m.jobs:,} jobs, {m.days} days -> {result.settings.paths.data}")
    console.print(f"[bold]feature store[/bold] {result.settings.paths.feature_store} (SQLite online, DuckDB offline)")
    report_training(result.training)
    print_table("aliases", ["family@alias", "version"], [[k, v] for k, v in result.aliases.items()])
    print_table("timings", ["step", "seconds"], [[k, f"{v:.1f}"] for k, v in result.seconds.items()])
    console.print(f"registry: {result.settings.paths.registry}")
    if result.live is not None:
        report_live_day(result.live)
    console.print(f"explore: dispatchml --config {result.config_path} models list")


def report_live_day(result) -> None:
    from cluster.live_day import summarize

    s = summarize(result)
    console.print(f"\n[bold]live day[/bold] {result.start:%Y-%m-%d %H:%M}..{result.end:%H:%M} simulated in {result.wall_seconds:.0f} s of wall time")
    print_table("requests", ["requests", "failed", "p50 ms", "p99 ms", "arms", "degraded"], [[
        f"{s.requests:,}", str(s.failed), f"{s.p50_ms:.0f}", f"{s.p99_ms:.0f}",
        ", ".join(f"{arm} {share:.1%}" for arm, share in s.arm_share.items()), f"{s.degraded_share:.1%}",
    ]])
    if result.outage is not None:
        console.print(f"online-store outage {result.outage[0]:%H:%M}-{result.outage[1]:%H:%M}: {s.outage_requests:,} requests, "
                      f"{s.outage_failed} failed, {s.outage_fallback_share:.0%} served by the fallback")
    print_table("events (firing)", ["first at", "kind", "severity", "segment", "subject", "times"], [[str(x) for x in e] for e in s.events] or [["-"] * 6])
    print_table("actions", ["first at", "action", "status", "policy rule", "times"], [[str(x) for x in a] for a in s.actions] or [["-"] * 5])
    if result.report is not None:
        console.print(f"[bold]report[/bold] {result.report} (open it in a browser)")
    console.print(f"prediction log: {Path(result.settings.paths.root) / 'prediction_log'}")
    console.print(f"event log: {result.settings.paths.events} (dispatchml --config {Path(result.settings.paths.root) / 'dispatchml.yaml'} incidents --all)")
    console.print("Grafana dashboards: cluster/grafana/ (provisioning files; see the README's Prometheus and Grafana section)")
    if result.kept_running:
        console.print(f"service: {result.settings.serving.host}:{result.settings.serving.port} is still up (dispatchml --config "
                      f"{Path(result.settings.paths.root) / 'dispatchml.yaml'} serve down stops it); Ray dashboard: http://127.0.0.1:8265")
    else:
        console.print("Ray dashboard: rerun with --keep-running, then open http://127.0.0.1:8265")


@app.command()
@command
def backtest(
    version: Annotated[list[str], typer.Option(help="Dispatch version or alias to score (repeatable).")] = ["champion"],  # noqa: B006
    start: Annotated[str | None, typer.Option(help="First request time, UTC (default: start of the data).")] = None,
    end: Annotated[str | None, typer.Option(help="Requests before this UTC time (default: as-of).")] = None,
    as_of: Annotated[str | None, typer.Option(help="Count labels known by this UTC time (default: end of the data).")] = None,
    segment: Annotated[list[str] | None, typer.Option(help="Segment column (repeatable; default region, cohort, LoB, hour).")] = None,
    window: Annotated[list[str] | None, typer.Option(help="Time window kind: week, month (repeatable; default both).")] = None,
    chunk_days: Annotated[int, typer.Option(min=1, help="Date partitions per scoring task.")] = 1,
    out: Annotated[Path | None, typer.Option(help="Output directory (default: <paths.reports>/backtest).")] = None,
) -> None:
    """Score registry versions side by side over history on Ray Data: metrics by week/month x segment, HTML report."""
    from eval.backtest import DEFAULT_SEGMENTS, WINDOWS, BacktestSpec, run_backtest
    from retrain.pipeline import data_span

    settings = _settings()
    span_start, span_end = data_span(Path(settings.paths.data))
    as_of_at = _utc_datetime(as_of) or span_end
    spec = BacktestSpec(
        versions=tuple(version), start=_utc_datetime(start) or span_start, end=_utc_datetime(end) or as_of_at, as_of=as_of_at,
        out=out or Path(settings.paths.reports) / "backtest", segments=tuple(segment or DEFAULT_SEGMENTS), windows=tuple(window or WINDOWS), chunk_days=chunk_days,
    )
    with progress_bar() as bar:
        task = bar.add_task("scoring date chunks", total=None)
        result = run_backtest(settings, spec, progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"scored {result.scored_rows:,} candidate rows x {len(result.versions)} versions in {result.seconds:.1f} s")
    for name, path in result.paths.items():
        console.print(f"  {name}: {path}")


@serve_app.command("up")
@command
def serve_up(timeout: Annotated[float, typer.Option(help="Seconds to wait for /readyz.")] = 300.0) -> None:
    """Start Ray (if needed) and the scoring app; return once it answers /readyz."""
    from cluster.serve import up

    with console.status("starting the scoring service"):
        status = up(_settings(), timeout_s=timeout)
    console.print(f"ready at {status.url}  (POST /v1/dispatch/score, GET /openapi.json, /metrics)")
    print_table("deployments", ["deployment", "status"], [[k, v] for k, v in status.deployments.items()])


@serve_app.command("down")
@command
def serve_down(keep_ray: Annotated[bool, typer.Option(help="Stop the app but leave Ray running.")] = False) -> None:
    """Stop the scoring app (and the local Ray unless --keep-ray)."""
    from cluster.serve import down

    down(_settings(), stop_ray=not keep_ray)
    console.print("stopped")


@serve_app.command("status")
@command
def serve_status() -> None:
    """Readiness and per-deployment status."""
    from cluster.serve import status

    st = status(_settings())
    console.print(f"{st.url}: {'ready' if st.ready else 'not ready'} ({st.detail})")
    print_table("deployments", ["deployment", "status"], [[k, v] for k, v in st.deployments.items()])
    if not st.ready:
        raise typer.Exit(1)


@app.command()
@command
def drill(
    name: Annotated[str, typer.Argument(help="A drill (store_down, store_slow, feed_stale, ...) or all.")],
    workdir: Annotated[Path, typer.Option(help="Drill world (built on first use).")] = Path("var/drills"),
    rate: Annotated[float, typer.Option(help="Requests per second, open loop.")] = 50.0,
    seconds: Annotated[float, typer.Option(help="Load per drill, seconds.")] = 24.0,
) -> None:
    """Fault drills under steady load on loopback: one line per drill; exit 1 if any missed its targets."""
    from cluster.drills import TABLE_COLUMNS, run_drills

    results = run_drills(name.split(","), workdir, rate, seconds, report=lambda r: console.print(r.line(), highlight=False, soft_wrap=True))
    print_table("drills", list(TABLE_COLUMNS), [r.table_row() for r in results])
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@alerts_app.command("render")
@command
def alerts_render(
    out: Annotated[Path | None, typer.Option(help="Directory for rules.yml and prometheus.yml (default: cluster/prometheus).")] = None,
    dashboards_out: Annotated[Path | None, typer.Option(help="Directory for the Grafana dashboards (default: cluster/grafana/dashboards).")] = None,
) -> None:
    """Generate the SLO recording and alerting rules, the scrape config and the Grafana dashboards."""
    from cluster import alert_rules, dashboards

    written = alert_rules.write(_settings(), out or alert_rules.PROMETHEUS_DIR) + dashboards.write(dashboards_out or dashboards.DASHBOARDS_DIR)
    for path in written:
        console.print(f"wrote {path}")


def _column_list(text: str | None) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip()) if text else ()


@app.command("drift-scan")
@command
def drift_scan(
    reference: Annotated[Path, typer.Option(help="Reference parquet file or directory.")],
    current: Annotated[Path, typer.Option(help="Current parquet file or directory (same columns).")],
    segment_by: Annotated[str | None, typer.Option(help="Segment columns, coarse to fine (rolled up), e.g. region_id,cell_id.")] = None,
    features: Annotated[str | None, typer.Option(help="Feature columns (default: every non-segment column).")] = None,
    categorical: Annotated[str | None, typer.Option(help="Columns to test as categories (chi-square).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write one row per (segment, feature) here.")] = None,
    fdr: Annotated[float, typer.Option(help="Benjamini-Hochberg false discovery rate.")] = 0.05,
    min_samples: Annotated[int, typer.Option(min=2, help="Skip segments with fewer values on either side.")] = 50,
) -> None:
    """Per-segment drift of every feature between two windows: PSI, KS, Wasserstein, JS, chi-square, BH."""
    import pandas as pd

    from eval.drift_scan import DriftScanSpec, run_drift_scan

    spec = DriftScanSpec(reference, current, _column_list(segment_by), _column_list(features) or None,
                         _column_list(categorical), fdr, min_samples, out)
    with progress_bar() as bar:
        task = bar.add_task("scanning feature chunks", total=None)
        result = run_drift_scan(spec, progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"{result.tests:,} tests, {result.drifted:,} drifted, {result.skipped:,} skipped "
                  f"in {result.seconds:.1f} s" + (f" -> {out}" if out else ""))
    top = result.table.filter(result.table.column("drift")).to_pandas().sort_values("q_value").head(10)
    columns = [*spec.segment_by, "feature", "psi", "wasserstein_norm", "q_value"]
    print_table("top drifted (segment, feature) pairs", columns,
                [[("all" if pd.isna(r[c]) else r[c]) if c in spec.segment_by else (f"{r[c]:.3g}" if c != "feature" else r[c])
                  for c in columns] for _, r in top.iterrows()])


@app.command("drift-report")
@command
def drift_report(
    scan: Annotated[Path, typer.Option(help="drift-scan output parquet (segmented by cell_id).")],
    cells: Annotated[Path, typer.Option(help="The warehouse's world/cells.parquet (grid row/col per cell).")],
    out: Annotated[Path, typer.Option(help="HTML file to write.")],
    feature: Annotated[str | None, typer.Option(help="One feature (default: worst PSI over all).")] = None,
) -> None:
    """Drift heatmap over the cell grid, as self-contained HTML."""
    from eval.drift_report import write_heatmap

    console.print(f"wrote {write_heatmap(scan, cells, out, feature)}")


# -- skew and delayed labels (eval/skew.py, eval/labels.py) ------------------------------------------


def _log_window(start: str, end: str) -> tuple[Path, datetime, datetime]:
    settings = _settings()
    lo, hi = _utc_datetime(start), _utc_datetime(end)
    if lo is None or hi is None or lo >= hi:
        raise UserError(f"--start {start} must be before --end {end}")
    return Path(settings.paths.root) / "prediction_log", lo, hi


@app.command()
@command
def skew(
    start: Annotated[str, typer.Option(help="First request time (UTC ISO).")],
    end: Annotated[str, typer.Option(help="End of the request window (UTC ISO, exclusive).")],
    segment_by: Annotated[str, typer.Option(help="Segment column of the prediction log.")] = "region_id",
    out: Annotated[Path | None, typer.Option(help="Write the full report as parquet.")] = None,
) -> None:
    """Training-serving skew: served feature vectors against Feast historical retrieval of the same rows."""
    from eval.skew import skew_scan

    log_root, lo, hi = _log_window(start, end)
    with console.status("recomputing served rows through Feast"):
        report = skew_scan(_settings(), log_root, lo, hi, segment_by)
    if out is not None:
        report.to_parquet(out, index=False)
    flagged = report[report["skewed"]]
    columns = [segment_by, "feature", "n", "mismatch_rate", "mismatch_ratio", "wasserstein_norm"]
    print_table(f"skew: {len(flagged)} of {len(report)} (segment, feature) pairs", columns, flagged[columns].round(4).astype(object).values.tolist())


@app.command()
@command
def labels(
    start: Annotated[str, typer.Option(help="First request time (UTC ISO).")],
    end: Annotated[str, typer.Option(help="End of the request window (UTC ISO, exclusive).")],
    as_of: Annotated[str | None, typer.Option(help="Labels known by this UTC time (default: --end).")] = None,
    segment_by: Annotated[str, typer.Option(help="Segment column of the prediction log.")] = "region_id",
    report: Annotated[Path | None, typer.Option(help="Write maturity, calibration and PIT plots as HTML.")] = None,
) -> None:
    """Label maturity and watermarks, realized metrics past them and label-free estimates per segment."""
    from eval.label_report import segment_scorecard, write_label_report
    from eval.labels import LABEL_KINDS, completeness_watermark, served_with_labels

    log_root, lo, hi = _log_window(start, end)
    known = _utc_datetime(as_of) or hi
    joined = served_with_labels(log_root, Path(_settings().paths.data), lo, hi, known)
    for kind in LABEL_KINDS:
        console.print(f"{kind}: {joined[kind].notna().mean():.1%} labelled, completeness watermark {completeness_watermark(joined, known, kind)}")
    card = segment_scorecard(joined, known, segment_by).round(3).astype(object)
    print_table(f"by {segment_by}", list(card.columns), card.values.tolist())
    if report is not None:
        console.print(f"report: {write_label_report(joined, known, report, segment_by)}")


@app.command()
@command
def report(
    start: Annotated[str, typer.Option(help="First request time of the span (UTC ISO).")],
    end: Annotated[str, typer.Option(help="End of the span (UTC ISO, exclusive).")],
    out: Annotated[Path, typer.Option(help="HTML file to write.")],
    incident_at: Annotated[str | None, typer.Option(help="Before/after split (default: the first firing event in the span).")] = None,
) -> None:
    """The closed loop's report: timeline of incidents and actions, drift over the cell map, calibration and metrics before/after."""
    from eval.loop_report import write_loop_report

    _, lo, hi = _log_window(start, end)
    with console.status("reading the prediction log, the event log and the labels"):
        path = write_loop_report(_settings(), lo, hi, out, incident_at=_utc_datetime(incident_at))
    console.print(f"wrote {path}")


# -- incidents and the event policy (cluster/event_log.py, retrain/policy.py, cluster/actions.py) ----


@app.command()
@command
def incidents(
    all_: Annotated[bool, typer.Option("--all", help="Closed incidents too.")] = False,
    kind: Annotated[str | None, typer.Option(help="Only this event kind (data_quality, concept_drift, ...).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Open incidents with their evidence and the actions taken or suggested."""
    from cluster.event_log import EventLog

    found = [i for i in EventLog(_settings().paths.events).incidents(include_closed=all_) if kind is None or i.first.kind == kind]
    if as_json:
        print_json([{"incident": i.key, "open": i.is_open, "first": i.first.model_dump(), "last": i.last.model_dump(), "events": i.events,
                     "actions": [a.model_dump() for a in i.actions]} for i in found])
        return
    rows = []
    for i in found:
        segment = ",".join(f"{k}={v}" for k, v in i.last.segment.items()) or "global"
        evidence = "; ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in i.last.evidence.items())
        actions = "; ".join(f"{a.action}:{a.status}" for a in i.actions) or "none yet"
        rows.append([i.last.severity, i.last.kind, i.last.subject, segment, i.first.observed_at.isoformat(timespec="minutes"),
                     "open" if i.is_open else "resolved", escape(i.last.summary), escape(evidence), actions, i.last.report or ""])
    print_table(f"{len(found)} {'' if all_ else 'open '}incident(s)",
                ["severity", "kind", "subject", "segment", "since", "state", "summary", "evidence", "actions", "report"], rows)


@app.command("policy-apply")
@command
def policy_apply(
    policy: Annotated[Path | None, typer.Option(help="Policy YAML (default: cluster/policy.yaml).")] = None,
) -> None:
    """Decide and act on new events once: pages, feature-group fallback, retrain suggestions; each recorded."""
    from cluster.actions import Executor, apply_policy
    from cluster.event_log import EventLog
    from retrain.policy import DEFAULT_POLICY, Policy

    settings = _settings()
    records = apply_policy(EventLog(settings.paths.events), Policy.load(policy or DEFAULT_POLICY), Executor(Path(settings.paths.registry)))
    print_table(f"{len(records)} decision(s)", ["action", "status", "reason"], [[r.action, r.status, escape(r.reason)] for r in records])


monitor_app = typer.Typer(no_args_is_help=True, help="The model-quality monitor: incremental passes over the prediction log and labels.")
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("run")
@command
def monitor_run(
    once: Annotated[bool, typer.Option(help="Process what is new and exit.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between passes.")] = 60.0,
    until: Annotated[str | None, typer.Option(help="Read data up to this UTC time and stop after reaching it (replays).")] = None,
) -> None:
    """Run monitor passes; each writes new events to the event log and prints a one-line summary."""
    from cluster.monitor import run_until

    for result in run_until(_settings(), _utc_datetime(until), interval, once):
        console.print(f"{result.as_of.isoformat()}: {result.rows_read} log rows, {result.labels_read} labels, {result.written} new events; report {result.report}")


# -- release (retrain/release.py) ------------------------------------------------------------------

release_app = typer.Typer(no_args_is_help=True, help="Release controller: shadow, canary steps, promotion, automatic rollback.")
app.add_typer(release_app, name="release")


def _print_release(situation: Any, decision: Any, verb: str) -> None:
    console.print(f"stage {situation.stage}: champion {situation.champion}, candidate {situation.candidate or '-'} "
                  f"(weight {situation.challenger_weight}, shadow {situation.shadow}, {situation.requests_at_step} requests at this step)")
    print_table("sequential test (challenger - champion)", ["metric", "n", "difference", "lower", "upper", "margin", "p", "verdict"],
                [[m.metric, m.n, f"{m.mean_difference:.4g}", f"{m.lower:.4g}", f"{m.upper:.4g}", m.margin, f"{m.p_value:.3g}", m.verdict]
                 for m in situation.test.metrics])
    print_table("guardrails", ["guardrail", "arm", "value", "limit", "requests", "tripped"],
                [[g.name, g.arm, f"{g.value:.4g}", f"{g.limit:.4g}", g.requests, g.tripped] for g in situation.guardrails])
    console.print(f"burn rate on the candidate's requests: {situation.burn}")
    console.print(f"[bold]{verb} {decision.action}[/bold] ({decision.code}): {escape(decision.reason)}", highlight=False)


@release_app.command("status")
@command
def release_status() -> None:
    """Stage, test evidence, guardrails and what the next step would decide (changes nothing)."""
    from retrain.release import release_step

    _print_release(*release_step(_settings(), dry_run=True), verb="next step would")


@release_app.command("step")
@command
def release_step_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Decide and print; change and record nothing.")] = False,
    token: Annotated[str, typer.Option(help="The admin token, checked as the admin API checks it.", envvar="DISPATCHML_RELEASE_TOKEN")] = "",
) -> None:
    """One tick of the release controller: observe, decide, act through the traffic file and registry, record."""
    import os

    from retrain.release import release_step
    from serve_apps.openapi import ADMIN_TOKEN_ENV, check_admin_token

    if not dry_run:
        check_admin_token(f"Bearer {token}", os.environ.get(ADMIN_TOKEN_ENV))
    _print_release(*release_step(_settings(), dry_run=dry_run), verb="would" if dry_run else "did")


def print_json(payload: Any) -> None:
    console.print_json(json.dumps(payload, default=str))


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[str(x) for x in r])
    console.print(table)


if __name__ == "__main__":
    app()
