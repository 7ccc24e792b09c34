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


def test_choice_options_list_their_choices_and_refuse_others():
    runner = CliRunner()
    help_text = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"}).output
    for choices in ("auto|whole|streamed|chunked", "float64|float32", "auto|numba|torch|cupy"):
        assert choices in help_text
    for command, words in ((["evaluate", "--help"], "train|val|test"), (["structure", "abn", "--help"], "full|fast")):
        assert words in runner.invoke(app, command, env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"}).output
    refused = runner.invoke(app, ["predict", "m.pt", "cell.xyz", "-o", "out.TSHS", "--mode", "sideways"])
    assert refused.exit_code == 2 and "sideways" in refused.output


def test_cli_choices_are_the_library_names():
    """The CLI's Enums repeat names of lower layers (to keep ``hforge --help`` fast): they must agree."""
    from hforge.cli._choices import AssemblyBackend, Mode, Protocol, Split, StudyModel
    from hforge.infer.plan import MODES
    from hforge.io.store import SplitRule
    from hforge.ops.assemble import _IMPLEMENTED
    from hforge.structures import PROTOCOLS
    from hforge.train.study import MODELS

    assert [m.value for m in Mode] == ["auto", *MODES]
    assert {b.value for b in AssemblyBackend} == {"auto", *_IMPLEMENTED}
    assert {p.value for p in Protocol} == set(PROTOCOLS)
    assert tuple(m.value for m in StudyModel) == MODELS
    rule = SplitRule()
    assert {s.value for s in Split} == {rule(n) for n in (1, rule.train_max_atoms + 1, rule.val_max_atoms + 1)}
