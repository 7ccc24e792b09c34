"""Entry point of the ``hforge`` command (``[project.scripts]`` in pyproject.toml)."""

from __future__ import annotations

import typer

from hforge.cli._errors import configure_logging, handle_sigterm
from hforge.cli.data import data_app
from hforge.cli.demo import demo_command
from hforge.cli.evaluate import evaluate_command
from hforge.cli.info import info
from hforge.cli.predict import predict_command
from hforge.cli.siesta_runs import register as register_siesta_commands
from hforge.cli.structure import structure_app
from hforge.cli.study import study_command
from hforge.cli.train import train_command

app = typer.Typer(
    name="hforge",
    help="Predict SIESTA Hamiltonian and overlap matrices from atomic structure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
register_siesta_commands(data_app)
app.add_typer(structure_app, name="structure")
app.command("train")(train_command)
app.command("evaluate")(evaluate_command)
app.command("demo")(demo_command)
app.command("predict")(predict_command)
app.command("study")(study_command)


@app.callback()
def main(
    ctx: typer.Context,
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Say what HForge does (its INFO log lines on stderr); warnings are always shown."
    ),
) -> None:
    """HForge: SIESTA H and S from atomic structure (eV, Å)."""
    configure_logging(verbose)
    ctx.call_on_close(handle_sigterm())  # SIGTERM unwinds like Ctrl-C: no temporary file left


@app.command("info")
def info_command(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")) -> None:
    """Versions, CPU/GPU found, and which kernel backends are usable here (and why not)."""
    info(as_json)


if __name__ == "__main__":
    app()
