"""``nanogpt export``: a run's checkpoint -> a Hugging Face GPT-2 folder.

An HF GPT-2 folder is accepted too (it is rewritten in the canonical layout); hub names and
presets are not: there is nothing of ours to export. The target folder must be empty unless
``--overwrite``, and is never a run folder or inside one (a run's config.json is not an HF
config). Files are written beside the target and renamed into place, so a symbolic link
there is replaced, never written through.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nanogpt.errors import NanoGPTError

# The kinds of nanogpt.resolve this command takes.
EXPORT_KINDS = frozenset({"run", "hf"})


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="SOURCE", help="a training run folder (runs/NAME) or a Hugging Face GPT-2 folder")
    parser.add_argument("--to", required=True, metavar="DIR", help="output folder for the Hugging Face GPT-2 files")
    parser.add_argument("--which", choices=["best", "last"], default="best", help="which checkpoint (default: best)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --to folder")


def _run_folder_around(path: Path) -> Path | None:
    """The run folder that ``path`` is or lies inside, if any."""
    from nanogpt.resolve import is_run_dir

    for p in (path, *path.parents):
        if is_run_dir(p) or (p / "metrics.jsonl").is_file() or ((p / "checkpoints").is_dir() and (p / "config.json").is_file()):
            return p
    return None


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse a --to that is a file, a run folder or inside one (always), or not empty (unless ``overwrite``)."""
    if out.exists() and not out.is_dir():
        raise NanoGPTError(f"--to {out} is a file, not a folder; pick a folder for the export")
    run = _run_folder_around(out.resolve())
    if run is not None:
        where = "is the run folder" if run == out.resolve() else f"is inside the run folder {run}"
        raise NanoGPTError(f"--to {out} {where}; export into a folder of its own, e.g. --to {run.name}-hf")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise NanoGPTError(f"--to {out} is not empty; pass --overwrite to replace its files, or pick an empty folder")


def write_export(out: Path, config: Any, state: dict[str, Any], eot: int | None, tokenizer: dict[str, Any] | None) -> None:
    """Write the HF files into a fresh temporary folder inside ``out``, then rename each into place."""
    from nanogpt.hf import write_gpt2

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".export-"))
    try:
        write_gpt2(config, state, tmp, eot_id=eot)
        if tokenizer is not None:
            (tmp / "nanogpt_tokenizer.json").write_text(json.dumps(tokenizer) + "\n", encoding="utf-8")
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cli_main(args: argparse.Namespace) -> int:
    from nanogpt.checkpoint import load_model
    from nanogpt.fsutil import os_error
    from nanogpt.resolve import resolve_source

    src = resolve_source(args.run_dir, EXPORT_KINDS)
    out = Path(args.to)
    check_target(out, args.overwrite)
    if src.kind == "run" and args.which == "best" and not (Path(src.name) / "best.json").is_file():
        raise NanoGPTError(f"{src.name} has no best checkpoint (no best.json: no evaluation has been saved as best); "
                           "export its last one with --which last")
    loaded = load_model(src, which=args.which)
    tok = loaded.tokenizer
    eot = getattr(tok, "eot_id", None) if tok is not None else None
    if tok is not None and getattr(tok, "name", "") == "gpt2":
        note, tok_file = "the tokenizer is GPT-2's: load it with AutoTokenizer.from_pretrained('gpt2')", None
    elif tok is not None:
        note, tok_file = f"the tokenizer is '{tok.name}' (written beside the weights as nanogpt_tokenizer.json)", tok.to_dict()
    else:
        note, tok_file = "no tokenizer information in the checkpoint", None
    try:
        write_export(out, loaded.model.config, loaded.model.state_dict(), eot, tok_file)
    except OSError as e:
        raise os_error(e, "write the export into", out, "make the folder writable, free some space, or pick another --to") from None
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'} ({loaded.model.num_params():,} parameters); {note}")
    return 0
