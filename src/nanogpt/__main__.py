"""``python -m nanogpt`` (also what ``torchrun -m nanogpt`` runs)."""

from nanogpt.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
