"""``hforge info``: versions, hardware and which kernel backends run here."""

from __future__ import annotations

import importlib.metadata
import os
import platform

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["collect_info", "info"]

_PACKAGES = ("torch", "e3nn", "mace-torch", "sisl", "numba", "triton", "cupy-cuda12x", "cupy-cuda13x", "ase", "vesin")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect_info() -> dict:
    """Everything ``hforge info`` prints, as a JSON-serialisable dict."""
    import torch

    import hforge
    from hforge.ops.backends import backend_status

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "hforge": hforge.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
        "packages": {p: _version(p) for p in _PACKAGES},
        "backends": {name: vars(s) for name, s in backend_status().items()},
    }


def info(as_json: bool = False) -> None:
    """Print versions, CPU/GPU found and the kernel backend table."""
    data = collect_info()
    console = Console()
    if as_json:
        import json

        console.print_json(json.dumps(data))
        return
    console.print(f"[bold]HForge {data['hforge']}[/bold]  Python {data['python']}  {data['platform']}")
    gpus = ", ".join(data["gpus"]) or "none"
    console.print(f"CPU cores: {data['cpu_count']} (torch threads {data['torch_threads']})   CUDA GPUs: {gpus}")
    versions = Table(title="packages")
    versions.add_column("package")
    versions.add_column("version")
    for package, version in data["packages"].items():
        if version is not None or not package.startswith("cupy"):
            versions.add_row(package, version or "[red]not installed[/red]")
    console.print(versions)
    backends = Table(title="kernel backends")
    for column in ("backend", "usable", "device", "detail"):
        backends.add_column(column)
    for name, status in data["backends"].items():
        usable = "[green]yes[/green]" if status["available"] else "[red]no[/red]"
        backends.add_row(name, usable, status["device"], escape(status["reason"]))
    console.print(backends)
