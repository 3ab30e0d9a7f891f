from click.testing import CliRunner

from clip_smot.cli import cli


def test_help_lists_the_five_commands():
    out = CliRunner().invoke(cli, ["--help"])
    assert out.exit_code == 0
    for name in ("fit", "score", "eval", "train", "export"):
        assert f"  {name} " in out.output


def test_the_cli_starts_without_open_clip_or_dynamo():
    """open_clip (about 2 s) and torch._dynamo (about 1 s) are imported only by the commands that use them."""
    import subprocess
    import sys

    code = "import sys, clip_smot.cli; print(sorted(m for m in ('open_clip', 'torch._dynamo') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
