"""The ``nanogpt`` command: one registry of subcommands, each a thin entry point.

Each subcommand lives in its own module, which provides ``add_cli_args(parser)`` and
``cli_main(args) -> int``. Only the chosen module is imported, so ``nanogpt --help`` is instant
and never imports torch.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
import traceback

from nanogpt import __version__
from nanogpt.errors import NanoGPTError

# name -> (module, one-line help). The one place subcommands are registered.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("nanogpt.prepare", "tokenize a corpus into token files (built-in Shakespeare, text files, folders, HF datasets)"),
    "train": ("nanogpt.train", "train or fine-tune a model (no arguments: the built-in Shakespeare on this device)"),
    "sample": ("nanogpt.sample", "generate text from a run, a Hugging Face GPT-2 folder or a hub name"),
    "eval": ("nanogpt.evaluate", "loss, perplexity and bits-per-byte of a model on a dataset or text file"),
    "bench": ("nanogpt.bench", "measure training and sampling speed, FLOP/s and MFU on this device"),
    "inspect": ("nanogpt.explain", "explain a configuration: shapes, parameters, FLOPs, memory, attention maps"),
    "plot": ("nanogpt.plot", "plot a run's train/val loss curves to a PNG"),
    "export": ("nanogpt.export", "export a run's checkpoint as a Hugging Face GPT-2 folder"),
    "serve": ("nanogpt.serve.command", "an OpenAI-compatible completion server and a browser playground that shows the model thinking"),
}


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: nanogpt [--version] [--debug] <command> [options]",
        "",
        "Train, fine-tune, inspect and sample GPT-2-style language models.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += [
        "",
        "options:",
        "  -h, --help   show this help (and 'nanogpt <command> --help' for a command's options)",
        "  --version    print the version and exit",
        "  --debug      show full tracebacks for errors",
    ]
    return "\n".join(lines)


def build_parser(command: str) -> argparse.ArgumentParser:
    """The argument parser of one subcommand (imports that command's module)."""
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"nanogpt {command}", description=help_)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    module.add_cli_args(parser)
    parser.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("NANOGPT_DEBUG") == "1"
    if not argv or argv[0] in ("-h", "--help"):
        print(_top_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"nanogpt {__version__}")
        return 0
    while argv and argv[0] == "--debug":
        argv.pop(0)
    command = argv[0] if argv else ""
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"nanogpt: error: unknown command '{command}'{hint}; run 'nanogpt --help' for the list", file=sys.stderr)
        return 2
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv[1:])
        return int(args._module.cli_main(args) or 0)
    except NanoGPTError as e:
        if debug:
            traceback.print_exc()
        print(f"nanogpt {command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"nanogpt {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `nanogpt inspect | head`: the reader left; not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except FileNotFoundError as e:
        # A path the user named that is not there; anything else unexpected is a bug and keeps its traceback.
        if debug:
            traceback.print_exc()
        print(f"nanogpt {command}: error: {e}", file=sys.stderr)
        return 2
