"""The command line: help, version, registry, one-line errors."""

import subprocess
import sys

import pytest

from nanogpt import __version__
from nanogpt.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("prepare", "train", "sample", "eval", "bench", "inspect", "plot", "export"):
        assert name in COMMANDS and f"  {name}" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"nanogpt {__version__}"


def test_unknown_command_suggests(capsys):
    assert main(["trian"]) == 2
    assert "did you mean 'train'" in capsys.readouterr().err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"nanogpt {command}" in capsys.readouterr().out


def test_train_help_is_generated_from_the_dataclasses(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--model.n_layer", "--data.batch_size", "--optim.lr", "--run.max_iters", "--run.init_from"):
        assert flag in out


def test_wrong_typed_flag_is_one_line(capsys):
    assert main(["train", "--model.n_layer", "four"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nanogpt train: error: model.n_layer must be int, got 'four'"]


def test_python_dash_m_and_no_torch_on_help():
    code = "import sys, runpy; sys.argv=['nanogpt','--help']\n" \
           "try:\n    runpy.run_module('nanogpt', run_name='__main__')\nexcept SystemExit: pass\n" \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "commands:" in out and out.strip().endswith("False")
