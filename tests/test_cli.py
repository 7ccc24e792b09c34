import json

from typer.testing import CliRunner

from hforge.cli.main import app


def test_info_reports_versions_and_backends():
    result = CliRunner().invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["packages"]["torch"]
    assert data["backends"]["torch"]["available"] is True
    assert {"torch", "numba", "triton", "cupy"} <= set(data["backends"])
