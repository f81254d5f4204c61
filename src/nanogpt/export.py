"""``nanogpt export``: a run's checkpoint -> a folder or file other tools open.

``--format hf`` (default): a Hugging Face folder (GPT-2, or Qwen3/Llama for the modern block)
with its tokenizer files, so ``AutoModelForCausalLM`` and ``AutoTokenizer`` load it offline.
``--format nanogpt``: nanoGPT's ``ckpt.pt`` (+ ``meta.pkl`` for a character vocabulary).
``--format gguf``: one GGUF file for llama.cpp-based runners (architecture gpt2, or qwen3 / llama
for the modern block with / without QK-norm).

An HF folder is accepted as the source too; hub names and presets are not: there is nothing of
ours to export. The target must be empty (or, for a file, absent) unless ``--overwrite``, and is
never a run folder or inside one. Files are written beside the target and renamed into place,
so a symbolic link there is replaced, never written through.
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
EXPORT_KINDS = frozenset({"run", "hf", "nanogpt"})


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="SOURCE", help="a training run folder (runs/NAME), a Hugging Face folder or a nanoGPT ckpt.pt")
    parser.add_argument("--to", required=True, metavar="DIR", help="output folder (hf, nanogpt), or a .gguf file name (gguf)")
    parser.add_argument("--which", choices=["best", "last"], default="best", help="which checkpoint (default: best)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --to folder")
    parser.add_argument("--format", choices=["hf", "nanogpt", "gguf"], default="hf",
                        help="hf: a Hugging Face folder; nanogpt: nanoGPT's ckpt.pt; gguf: a .gguf file for llama.cpp "
                             "(gpt2, or qwen3/llama for the modern block) (default: hf)")
    parser.add_argument("--type", dest="gguf_type", choices=["f32", "f16", "bf16", "q8_0"], default="f16",
                        help="gguf only: the matrices' number format (default: f16)")


def _run_folder_around(path: Path) -> Path | None:
    """The run folder that ``path`` is or lies inside, if any."""
    from nanogpt.resolve import is_run_dir

    for p in (path, *path.parents):
        if is_run_dir(p) or (p / "metrics.jsonl").is_file() or ((p / "checkpoints").is_dir() and (p / "config.json").is_file()):
            return p
    return None


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse a --to that is a run folder or inside one (always), or in the way (unless ``overwrite``)."""
    gguf = out.suffix == ".gguf"  # one file: its folder may hold anything else
    if gguf and (out.is_symlink() or out.is_dir()):
        raise NanoGPTError(f"--to {out} is a link or a folder; give a new .gguf file name")
    if gguf and out.exists() and not overwrite:
        raise NanoGPTError(f"--to {out} exists; pass --overwrite to replace it, or pick another name")
    if not gguf and out.exists() and not out.is_dir():
        raise NanoGPTError(f"--to {out} is a file, not a folder; pick a folder for the export")
    folder = out.parent if gguf else out
    run = _run_folder_around(folder.resolve())
    if run is not None:
        where = "is the run folder" if run == folder.resolve() else f"is inside the run folder {run}"
        raise NanoGPTError(f"--to {out} {where}; export into a folder of its own, e.g. --to {run.name}-hf")
    if not gguf and out.is_dir() and any(out.iterdir()) and not overwrite:
        raise NanoGPTError(f"--to {out} is not empty; pass --overwrite to replace its files, or pick an empty folder")


def _write_hf(tmp: Path, config: Any, state: dict[str, Any], tok: Any) -> None:
    from nanogpt.hf import write_pretrained
    from nanogpt.hf_tokenizer import write_hf_tokenizer

    eot = getattr(tok, "eot_id", None) if tok is not None else None
    write_pretrained(config, state, tmp, eot_id=eot)
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": eot, "eos_token_id": eot}) + "\n", encoding="utf-8")
    if tok is not None:
        write_hf_tokenizer(tok, tmp, config.block_size)
        if tok.name != "gpt2":  # read back by nanogpt exactly as it was trained
            (tmp / "nanogpt_tokenizer.json").write_text(json.dumps(tok.to_dict()) + "\n", encoding="utf-8")
    os.chmod(tmp / "model.safetensors", 0o644)  # readable by whoever serves the folder


def _write_nanogpt(tmp: Path, config: Any, state: dict[str, Any], tok: Any) -> None:
    from nanogpt.nanogpt_format import write_checkpoint
    from nanogpt.tokenizer import CharTokenizer

    if config.arch != "gpt2":
        raise NanoGPTError("nanoGPT's model is GPT-2's block; a model with --model.arch modern cannot be written for it")
    write_checkpoint(config, state, tmp, chars=tok.chars if isinstance(tok, CharTokenizer) else None)


def write_export(out: Path, fmt: str, model: Any, tok: Any, gguf_type: str = "f16", name: str = "") -> list[str]:
    """Write the export into a fresh temporary folder inside ``out``, then rename each file into place."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".export-"))
    try:
        config, state = model.config, model.state_dict()
        if fmt == "hf":
            _write_hf(tmp, config, state, tok)
        elif fmt == "nanogpt":
            _write_nanogpt(tmp, config, state, tok)
        else:
            from nanogpt.gguf_export import write_gguf

            write_gguf(config, state, tok, tmp / name, kind=gguf_type)
        names = sorted(f.name for f in tmp.iterdir())
        for f in names:
            os.replace(tmp / f, out / f)
        return names
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _notes(fmt: str, model: Any, tok: Any) -> list[str]:
    """What the user should know about the export: how to load it, and what it changes."""
    notes = []
    if fmt == "gguf" and tok is not None:
        from nanogpt.gguf_export import gelu_note

        vocab = model.config.vocab_size
        note = gelu_note(model, [(7 * i) % vocab for i in range(64)])  # any ids: a fixed spread over the vocabulary
        notes += [note] if note else []
    if fmt == "nanogpt" and getattr(tok, "name", "") == "char":
        notes.append("for nanoGPT's sample.py: put ckpt.pt in its out_dir and meta.pkl in data/nanogpt_export/")
    if fmt == "nanogpt" and model.config.activation != "gelu":
        notes.append("note: nanoGPT runs the exact GELU; this model was trained with the tanh one, so nanoGPT's outputs differ slightly")
    if fmt == "hf":
        notes.append("load it offline with AutoModelForCausalLM.from_pretrained(DIR) and AutoTokenizer.from_pretrained(DIR)"
                     if tok is not None else "no tokenizer information in the checkpoint: only the weights were written")
    return notes


def cli_main(args: argparse.Namespace) -> int:
    from nanogpt.checkpoint import load_model
    from nanogpt.fsutil import os_error
    from nanogpt.resolve import resolve_source

    src = resolve_source(args.run_dir, EXPORT_KINDS)
    target = Path(args.to)
    if args.format == "gguf" and target.suffix != ".gguf":
        raise NanoGPTError(f"--format gguf writes one file: give --to a name ending in .gguf (e.g. {target.name or 'model'}.gguf)")
    check_target(target, args.overwrite)
    if src.kind == "run" and args.which == "best" and not (Path(src.name) / "best.json").is_file():
        raise NanoGPTError(f"{src.name} has no best checkpoint (no best.json: no evaluation has been saved as best); "
                           "export its last one with --which last")
    loaded = load_model(src, which=args.which)
    if args.format == "gguf" and loaded.tokenizer is None:
        raise NanoGPTError("a GGUF file needs the tokenizer, and this source does not say which one it was trained with")
    out = target.parent if args.format == "gguf" else target
    try:
        names = write_export(out, args.format, loaded.model, loaded.tokenizer, args.gguf_type, target.name)
    except OSError as e:
        raise os_error(e, "write the export into", out, "make the folder writable, free some space, or pick another --to") from None
    print(f"wrote {', '.join(names)} to {out} ({loaded.model.num_params():,} parameters)")
    for note in _notes(args.format, loaded.model, loaded.tokenizer):
        print(note)
    return 0
