"""``python -m uniq ...``: the reproduction's command line (``uniq.repro.cli``)."""

from uniq.repro.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
