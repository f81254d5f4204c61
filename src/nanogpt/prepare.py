"""``nanogpt prepare``: tokenize corpora into a dataset folder (the pipeline is ``nanogpt.data.preparation``)."""

from __future__ import annotations

import argparse

from nanogpt.data.corpora import HF_DATASETS
from nanogpt.data.preparation import default_out_dir, prepare


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Flags of ``nanogpt prepare``."""
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="shakespeare (built in, offline) | tinyshakespeare | a UTF-8 text file | a folder | "
                             f"a Hugging Face corpus: {' | '.join(HF_DATASETS)}")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: data/<first source>-<tokenizer>, e.g. data/shakespeare-char)")
    parser.add_argument("--vocab-size", type=int, default=4096, metavar="N",
                        help="bpe only: tokens of the BPE trained on the train split (default: 4096)")
    parser.add_argument("--tokenizer", choices=["char", "gpt2", "bpe"], default="char",
                        help="char: one id per character of the corpus; gpt2: GPT-2's BPE; bpe: a BPE trained on this corpus (default: char)")
    parser.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                        help="share of the text (one text) or of the documents (many) kept for validation (default: 0.1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    parser.add_argument("--glob", default="**/*.txt", help="files to take from folder sources (default: **/*.txt)")
    parser.add_argument("--errors", choices=["strict", "replace", "ignore"], default="strict",
                        help="invalid UTF-8: stop (strict), use U+FFFD (replace) or drop the bytes (default: strict)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes for GPT-2 encoding (default: all cores for 16 MB or more, else 1)")
    parser.add_argument("--input", dest="input_path", default=None, metavar="PATH",
                        help="a local copy of tiny Shakespeare for the tinyshakespeare source")
    parser.add_argument("--max-documents", type=int, default=None, metavar="N", help="stop after this many documents")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def cli_main(args: argparse.Namespace) -> int:
    """Entry point of ``nanogpt prepare``."""
    out = args.out or default_out_dir(args.sources, args.tokenizer)
    prepare(
        args.sources,
        out,
        tokenizer=args.tokenizer,
        val_fraction=args.val_fraction,
        overwrite=args.overwrite,
        glob=args.glob,
        errors=args.errors,
        workers=args.workers,
        input_path=args.input_path,
        progress=not args.quiet,
        max_documents=args.max_documents,
        vocab_size=args.vocab_size,
    )
    return 0
