from click.testing import CliRunner

from clip_smot.cli import cli


def test_help_lists_the_five_commands():
    out = CliRunner().invoke(cli, ["--help"])
    assert out.exit_code == 0
    for name in ("fit", "score", "eval", "train", "export"):
        assert f"  {name} " in out.output
