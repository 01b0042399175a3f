"""Command line: ``privsem run [CONFIG] [--preset NAME] [--out RUN_DIR] [--set key=value ...]``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from privsem.errors import PrivsemError


def _run(args: argparse.Namespace) -> int:
    from privsem.config import load_config
    from privsem.runtime.inprocess import run

    if args.resume:
        if args.config or args.preset or args.set or args.out:
            print("privsem run --resume RUN_DIR takes the run's own config.yaml; drop the config, "
                  "--preset, --set and --out arguments", file=sys.stderr)
            return 2
        out = Path(args.resume)
        if not (out / "config.yaml").exists():
            print(f"{out}: no config.yaml; is this a run folder?", file=sys.stderr)
            return 2
        cfg = load_config(str(out / "config.yaml"))
        run(cfg, out, show_progress=not args.quiet, resume=True)
    else:
        preset = args.preset if (args.preset or args.config) else "demo"
        cfg = load_config(args.config, preset=None if args.config else preset,
                          overrides=args.set or [])
        if args.out:
            out = Path(args.out)
        else:  # runs/NAME, or the first runs/NAME-k not holding a run: nothing is overwritten
            from privsem.runtime.inprocess import in_use

            out, k = Path("runs") / cfg.name, 1
            while in_use(out):
                k += 1
                out = Path("runs") / f"{cfg.name}-{k}"
        run(cfg, out, show_progress=not args.quiet)
    print(f"run folder: {out}")
    for name in ("config.yaml", "metrics.jsonl", "ledger.jsonl", "report.md"):
        print(f"  {out / name}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from privsem.models.loading import BUILTINS

    for name in BUILTINS:
        print(name)
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from privsem.data import demo

    for p in demo.write(args.dir):
        print(p)
    return 0


def _report(args: argparse.Namespace) -> int:
    from privsem.reports.write import write_reports

    for p in write_reports(args.run_dir):
        print(p)
    return 0


def _quiet_known_noise() -> None:
    """Silences warnings that are expected and harmless here, so real ones stand out."""
    # Opacus' backward hooks on LoRA modules whose inputs need no gradient (frozen base).
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    _quiet_known_noise()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap = argparse.ArgumentParser(prog="privsem", description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="run a federation (default preset: demo)")
    r.add_argument("config", nargs="?", help="YAML or TOML configuration file")
    r.add_argument("--preset", help="built-in preset: demo or smoke")
    r.add_argument("--out", help="run folder (default runs/NAME)")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field, e.g. --set privacy.client.epsilon=4")
    r.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run after its last completed round")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(fn=_run)
    m = sub.add_parser("models", help="list built-in model names")
    m.set_defaults(fn=_models)
    d = sub.add_parser("demo-data", help="write the demo federation's files to DIR")
    d.add_argument("dir")
    d.set_defaults(fn=_demo_data)
    rep = sub.add_parser("report", help="write RUN_DIR/report.md and report.html from the run "
                         "folder (ε recomputed from its ledger)")
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.set_defaults(fn=_report)
    args = ap.parse_args(argv)
    if args.cmd is None:
        args = ap.parse_args(["run", *(argv or [])])
    try:
        return int(args.fn(args))
    except PrivsemError as e:
        print(f"privsem: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
