"""Bytes per token of char, GPT-2 BPE and a BPE trained on the text itself, and what that buys in bits per byte.

1. For the built-in Shakespeare and a Japanese text: each tokenizer's UTF-8 bytes per token on
   the text's last 10% (the trained BPEs learn from the first 90%; the char vocabulary too).
2. Bits per byte on the built-in Shakespeare's validation split after the same CPU training
   budget (the `shakespeare-char-cpu` preset), with the char tokenizer and with a trained BPE.

The Japanese text: any few MB of Japanese. On Debian, the Japanese manual pages make one:

    apt-get install manpages-ja
    find /usr/share/man/ja -name '*.gz' | sort | xargs zcat | grep -v '^\\.\\\\"' \\
        | sed -e 's/^\\.[A-Za-z]\\{1,3\\} *//' -e 's/\\\\f[BIRP]//g' > /tmp/manpages-ja.txt
    python benchmarks/tokenizer_bytes.py --japanese /tmp/manpages-ja.txt

Writes ``results/tokenizer_bytes.json`` and ``results/tokenizer_bytes.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def bytes_per_token(name: str, text: str, vocab_sizes: list[int]) -> list[dict]:
    """Rows of (tokenizer, vocabulary, bytes/token) on the last 10% of ``text``."""
    from nanogpt.bpe import train_bpe
    from nanogpt.tokenizer import get_gpt2_tokenizer

    cut = int(len(text) * 0.9)
    train, held = text[:cut], text[cut:]
    n_bytes = len(held.encode("utf-8"))
    chars = set(train)
    rows = [{"text": name, "tokenizer": "char", "vocab": len(chars),
             "bytes_per_token": n_bytes / len(held), "unknown_chars": sum(c not in chars for c in held)}]
    gpt2 = get_gpt2_tokenizer()
    rows.append({"text": name, "tokenizer": "gpt2", "vocab": gpt2.vocab_size, "bytes_per_token": n_bytes / len(gpt2.encode(held))})
    for v in vocab_sizes:
        bpe = train_bpe(train.splitlines(keepends=True), v)
        rows.append({"text": name, "tokenizer": "bpe", "vocab": bpe.vocab_size,
                     "bytes_per_token": n_bytes / len(bpe.encode(held))})
    return rows


def train_bits_per_byte(budget: float, bpe_vocab: int, work: Path) -> list[dict]:
    """Val bits per byte of the CPU preset on the built-in Shakespeare after ``budget`` seconds, char vs BPE."""
    rows = []
    for tok in ("char", "bpe"):
        data, out = work / f"data-{tok}", work / f"run-{tok}"
        prep = [sys.executable, "-m", "nanogpt", "prepare", "shakespeare", "--tokenizer", tok, "--out", str(data), "--quiet"]
        subprocess.run(prep + (["--vocab-size", str(bpe_vocab)] if tok == "bpe" else []), check=True)
        subprocess.run([sys.executable, "-m", "nanogpt", "train", "--preset", "shakespeare-char-cpu",
                        f"--data.dataset={data}", f"--data.tokenizer={tok}", f"--run.out_dir={out}",
                        f"--run.max_seconds={budget:g}", "--run.sample_tokens=0", "--run.progress=false"],
                       check=True, stdout=subprocess.DEVNULL)
        evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in evals if r.get("kind") == "eval"][-1]
        meta = json.loads((data / "meta.json").read_text())
        rows.append({"tokenizer": tok, "vocab": meta["vocab_size"], "budget_s": budget, "iters": last["iter"],
                     "val_loss": last["val_loss"], "val_bpb": last["val_bpb"]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--japanese", required=True, help="a UTF-8 Japanese text of a few MB (see the docstring)")
    ap.add_argument("--vocab-sizes", default="1024,4096,8192", help="BPE vocabularies to train")
    ap.add_argument("--budget", type=float, default=60.0, help="training seconds per tokenizer for part 2 (0: skip)")
    ap.add_argument("--train-bpe-vocab", type=int, default=1024, help="the BPE vocabulary trained on in part 2")
    args = ap.parse_args()
    from nanogpt.data.corpora import shakespeare_text

    sizes = [int(v) for v in args.vocab_sizes.split(",")]
    japanese = Path(args.japanese).read_text(encoding="utf-8", errors="replace")
    rows = bytes_per_token("Shakespeare (built-in)", shakespeare_text(), sizes)
    rows += bytes_per_token(f"Japanese ({Path(args.japanese).name}, {len(japanese.encode()) / 2**20:.1f} MiB)", japanese, sizes)
    trained = train_bits_per_byte(args.budget, args.train_bpe_vocab, Path(tempfile.mkdtemp())) if args.budget else []
    import torch

    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
            "torch": torch.__version__, "command": "python benchmarks/tokenizer_bytes.py " + " ".join(sys.argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tokenizer_bytes.json").write_text(json.dumps({"meta": meta, "bytes_per_token": rows, "training": trained}, indent=1) + "\n")
    lines = [f"Recorded {meta['date']}, torch {meta['torch']}. Command: `{meta['command']}`", "",
             "| text | tokenizer | vocabulary | UTF-8 bytes per token (last 10%) |", "|---|---|---:|---:|"]
    lines += [f"| {r['text']} | {r['tokenizer']} | {r['vocab']:,} | {r['bytes_per_token']:.2f} |" for r in rows]
    if trained:
        lines += ["", "| tokenizer | vocabulary | training budget | iterations | val loss | val bits per byte |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['tokenizer']} | {r['vocab']:,} | {r['budget_s']:g} s | {r['iters']} | {r['val_loss']:.4f} | "
                  f"{r['val_bpb']:.4f} |" for r in trained]
    (RESULTS / "tokenizer_bytes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
