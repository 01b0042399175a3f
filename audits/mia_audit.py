"""`python audits/mia_audit.py RUN_DIR ...`: the same as `privsem audit mia RUN_DIR ...`.

See `privsem audit mia --help` and privsem/audits/mia_audit.py for what it measures.
Importable: `main(argv)` returns the exit status.
"""

from __future__ import annotations

import sys

from privsem.cli import main as privsem_main


def main(argv: list[str] | None = None) -> int:
    return privsem_main(["audit", "mia", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
