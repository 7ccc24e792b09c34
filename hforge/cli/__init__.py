"""The ``hforge`` command line (typer); each subcommand lives in its own module."""
