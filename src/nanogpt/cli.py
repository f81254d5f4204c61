"""The ``nanogpt`` command: one registry of subcommands, each a thin entry point.

Each subcommand lives in its own module, which provides ``add_cli_args(parser)`` and
``cli_main(args) -> int``. Only the chosen module is imported, so ``nanogpt --help`` is instant
and never imports torch.
"""

from __future__ import annotations

import argparse
import difflib
import errno
import importlib
import os
import sys
import traceback
import typing

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


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line: an unknown flag gets the nearest real one, not the usage."""

    def error(self, message: str) -> "typing.NoReturn":  # type: ignore[override]
        raise NanoGPTError(usage_error(message, self.known_flags(), self.prog))

    def known_flags(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]


def usage_error(message: str, flags: list[str], prog: str) -> str:
    """argparse's ``message`` as one line; 'unrecognized arguments' names each unknown flag's nearest match."""
    see = f"see '{prog} --help'"
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return f"{message}; {see}"
    unknown = [w.split("=", 1)[0] for w in message[len(prefix):].split() if w.startswith("-")]
    if not unknown:
        return f"unexpected argument(s) {message[len(prefix):]}; {see}"
    hints = []
    for flag in unknown:
        close = difflib.get_close_matches(flag, flags, n=1, cutoff=0.6)
        hints.append(f"'{flag}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return f"unknown option {', '.join(hints)}; {see}"


# errno -> what to do about it, for OS errors that name a path the user chose.
_OS_ADVICE = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "choose a folder on a writable disk",
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is used up; free some space or choose another folder",
    errno.EISDIR: "it is a folder; give a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
    errno.EEXIST: "it is in the way; move it or choose another path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.ENOTEMPTY: "the folder is not empty; choose another path",
    errno.ELOOP: "it is a symbolic link loop; choose another path",
}


def os_error_line(e: OSError) -> str | None:
    """One line for an OS error about a path the user can fix, None for anything else (a bug)."""
    advice = _OS_ADVICE.get(e.errno) or ("check the path" if isinstance(e, FileNotFoundError) else None)
    if advice is None:
        return None
    if e.filename is None and not isinstance(e, FileNotFoundError) and e.errno not in _NO_PATH_NEEDED:
        return None
    what = e.strerror or str(e)
    where = f"{e.filename}: " if e.filename is not None else ""
    return f"{where}{what[:1].lower()}{what[1:]}; {advice}"


# A full or read-only disk is the user's to fix even when the error does not say which file.
_NO_PATH_NEEDED = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def build_parser(command: str) -> argparse.ArgumentParser:
    """The argument parser of one subcommand (imports that command's module)."""
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = OneLineParser(prog=f"nanogpt {command}", description=help_)
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
    except OSError as e:
        # A path the user named that is missing, read-only, full or a file where a folder belongs;
        # any other OS error is unexpected and keeps its traceback.
        line = os_error_line(e)
        if line is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"nanogpt {command}: error: {line}", file=sys.stderr)
        return 2
