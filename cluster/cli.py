"""``dispatchml``: the one operator command. Each subcommand parses, calls a library function, prints.

Errors print one line and exit non-zero; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cluster.config import Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Roadside dispatch ML: simulate, features, train, registry, demo.")
features_app = typer.Typer(no_args_is_help=True, help="Feast feature repo: apply definitions, materialize to the online store.")
models_app = typer.Typer(no_args_is_help=True, help="Model registry: versions and aliases.")
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")

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
        except Exception as exc:  # noqa: BLE001 - the CLI boundary is where errors become messages
            if _state["debug"]:
                raise
            console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False)
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
    config: Annotated[Optional[Path], typer.Option("--config", help="Settings YAML (default: embedded single machine).")] = None,
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
    scenario: Annotated[Optional[Path], typer.Option(help="Incident scenario YAML.")] = None,
    cells: Annotated[Optional[int], typer.Option(help="Override the world's cell count.")] = None,
    regions: Annotated[Optional[int], typer.Option(help="Override the world's region count.")] = None,
    providers: Annotated[Optional[int], typer.Option(help="Override the world's provider count.")] = None,
) -> None:
    """Simulate dispatch history into date-partitioned parquet."""
    from simulator.run import SimulationSpec, simulate as run_simulation
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
