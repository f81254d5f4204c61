"""``nanogpt export``: a run's checkpoint -> a Hugging Face GPT-2 folder.

An HF GPT-2 folder is accepted too (it is rewritten in the canonical layout); hub names and
presets are not: there is nothing of ours to export.
"""

from __future__ import annotations

import argparse
import json

# The kinds of nanogpt.resolve this command takes.
EXPORT_KINDS = frozenset({"run", "hf"})


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="SOURCE", help="a training run folder (runs/NAME) or a Hugging Face GPT-2 folder")
    parser.add_argument("--to", required=True, metavar="DIR", help="output folder for the Hugging Face GPT-2 files")
    parser.add_argument("--which", choices=["best", "last"], default="best", help="which checkpoint (default: best)")


def cli_main(args: argparse.Namespace) -> int:
    from nanogpt.checkpoint import load_model
    from nanogpt.hf import write_gpt2
    from nanogpt.resolve import resolve_source

    loaded = load_model(resolve_source(args.run_dir, EXPORT_KINDS), which=args.which)
    tok = loaded.tokenizer
    eot = getattr(tok, "eot_id", None) if tok is not None else None
    out = write_gpt2(loaded.model.config, loaded.model.state_dict(), args.to, eot_id=eot)
    if tok is not None and getattr(tok, "name", "") == "gpt2":
        note = "the tokenizer is GPT-2's: load it with AutoTokenizer.from_pretrained('gpt2')"
    elif tok is not None:
        note = f"the tokenizer is '{tok.name}' (written beside the weights as nanogpt_tokenizer.json)"
        (out / "nanogpt_tokenizer.json").write_text(json.dumps(tok.to_dict()) + "\n", encoding="utf-8")
    else:
        note = "no tokenizer information in the checkpoint"
    print(f"wrote {out / 'config.json'} and {out / 'model.safetensors'} ({loaded.model.num_params():,} parameters); {note}")
    return 0
