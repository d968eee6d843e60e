"""`python -m mmrl ...` (and `accelerate launch -m mmrl ...`) run the same CLI as the `mmrl` script."""

from mmrl.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
