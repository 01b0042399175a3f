"""Command line: ``privsem run [CONFIG] [--preset NAME] [--out RUN_DIR] [--set key=value ...]``,
``privsem simulate [CONFIG] [--preset NAME] [--clients N] [--set key=value ...]`` (Flower),
``privsem report RUN_DIR``, ``privsem audit canaries|mia|inversion RUN_DIR``,
``privsem check [CONFIG] [--preset NAME] [--threat-model NAME ...]``,
``privsem bench [--quick] [--out DIR | --resume DIR]``, ``privsem deploy trial|init``,
``privsem node DIR``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from privsem.errors import PrivsemError

if TYPE_CHECKING:
    from privsem.config import RunConfig


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
        out = _checked_out(args.out) if args.out else _new_run_folder(cfg.name)
        run(cfg, out, show_progress=not args.quiet)
    _print_run_folder(out)
    return 0


def _checked_out(value: str) -> Path:
    """``--out`` as a folder privsem can make or use, refused before anything is created: not
    an existing file, and under a folder this user may write to."""
    from privsem.errors import ConfigError

    out = Path(value)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", value, "it names an existing file; give a folder (new, or "
                          "one to continue with --resume)")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError("--out", value, f"{parent} is a file, so no folder can be made under "
                          "it; choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError("--out", value, f"{parent} is not writable by this user; choose "
                          "another --out")
    return out


def _new_run_folder(name: str) -> Path:
    """runs/NAME, or the first runs/NAME-k not holding a run: nothing is overwritten."""
    from privsem.runtime.inprocess import in_use

    out, k = Path("runs") / name, 1
    while in_use(out):
        k += 1
        out = Path("runs") / f"{name}-{k}"
    return out


def _print_run_folder(out: Path) -> None:
    print(f"run folder: {out}")
    for name in ("config.yaml", "metrics.jsonl", "ledger.jsonl", "report.md"):
        print(f"  {out / name}")


def _simulate(args: argparse.Namespace) -> int:
    """The federation on Flower's simulation engine. The arguments become a Flower run config
    (``config`` or ``preset``, ``clients``, dotted fields), converted by the same function a
    deployed ServerApp uses."""
    from privsem.config import load_config, parse_override
    from privsem.runtime.flower.simulation import from_run_config, simulate

    if args.resume:
        out = Path(args.resume)
        if args.config or args.preset or args.set or args.out or args.clients:
            print("privsem simulate --resume RUN_DIR takes the run's own config.yaml; drop the "
                  "other arguments", file=sys.stderr)
            return 2
        simulate(load_config(str(out / "config.yaml")), out, show_progress=not args.quiet,
                 resume=True)
        _print_run_folder(out)
        return 0
    run_config: dict[str, object] = {}
    if args.config:
        run_config["config"] = args.config
    if args.preset or not args.config:
        run_config["preset"] = args.preset or "smoke"
    if args.clients is not None:
        run_config["clients"] = args.clients
    for item in args.set or []:
        parts, value = parse_override(item)
        run_config[".".join(parts)] = value
    cfg = from_run_config(run_config)
    out = _checked_out(args.out) if args.out else _new_run_folder(f"{cfg.name}-flower")
    simulate(cfg, out, show_progress=not args.quiet)
    _print_run_folder(out)
    return 0


def _check(args: argparse.Namespace) -> int:
    """Which threat models the configuration defends and why; exit 1 when a claimed one (in
    the configuration's ``threat_models`` or by ``--threat-model``) does not hold, 2 when the
    configuration itself is refused."""
    import json

    from privsem.config import load_config
    from privsem.errors import ConfigError
    from privsem.threats import assess, describe, load_catalogue, refuse_false_claims, to_json

    preset = args.preset if (args.preset or args.config) else "demo"
    cfg = load_config(args.config, preset=None if args.config else preset,
                      overrides=args.set or [])
    claims = tuple(args.threat_model or ())
    try:
        result = refuse_false_claims(cfg, claims)
        refused = None
    except ConfigError as e:
        result, refused = assess(cfg, load_catalogue()), e
    if args.json:
        print(json.dumps({**to_json(cfg, result), "claims": [*cfg.threat_models, *claims],
                          "refused": str(refused) if refused else None}, indent=2))
    else:
        print(describe(cfg, result))
    if refused is not None:
        print(f"\nprivsem: refused: {refused}", file=sys.stderr)
        return 1
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


def _audit(args: argparse.Namespace) -> int:
    """``privsem audit KIND RUN_DIR ...``: 0 done (the canary audit: passed), 2 bad input, 3 the
    canary audit found a violation (empirical ε above the accounted ε, or a verbatim leak)."""
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.audit == "canaries":
        from privsem.audits.canary_audit import run_from_args
    elif args.audit == "mia":
        from privsem.audits.mia_audit import run_from_args
    else:
        from privsem.audits.inversion_audit import run_from_args
    return run_from_args(args)


def _audit_arguments(ap: argparse.ArgumentParser, *, client: str | None, round_help: str
                     ) -> None:
    """The arguments every audit takes: the run folder, the round, torch threads, --no-report;
    ``client`` (its help text) adds a required --client."""
    ap.add_argument("run_dir", metavar="RUN_DIR")
    if client:
        ap.add_argument("--client", required=True, help=client)
    ap.add_argument("--round", type=int, default=None, help=round_help)
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--no-report", action="store_true", help="do not regenerate report.md/html")


_AFTER_ROUND = "audit the model after this round (default: the last completed)"


def _canaries_arguments(ap: argparse.ArgumentParser) -> None:
    _audit_arguments(ap, client=None, round_help=_AFTER_ROUND)
    ap.add_argument("--exposure-samples", type=int, default=100,
                    help="secrets sampled per canary for its exposure (0: skip; default 100)")
    ap.add_argument("--confidence", type=float, default=0.95,
                    help="confidence of the empirical ε lower bound (default 0.95)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the exposure sampling")


def _mia_arguments(ap: argparse.ArgumentParser) -> None:
    _audit_arguments(ap, client="the client whose model is attacked", round_help=_AFTER_ROUND)
    ap.add_argument("--nonmembers", default=None,
                    help="JSONL of same-distribution examples the client never trained on "
                         "(default for demo data: fresh examples of the demo generator)")


def _inversion_arguments(ap: argparse.ArgumentParser) -> None:
    _audit_arguments(ap, client="the client whose uploads are attacked",
                     round_help="audit this round only (default: every completed round)")
    ap.add_argument("--margin", type=float, default=0.1,
                    help="token-F1 above chance still counted as chance (default 0.1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the curve's noise")


def _add_audit_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    a = sub.add_parser("audit", help="privacy audits of a finished run folder (results in "
                       "RUN_DIR/audit/ and the report)")
    kinds = a.add_subparsers(dest="audit", required=True)
    for name, add, text in (
            ("canaries", _canaries_arguments,
             ("canary membership inference, the one-run empirical ε lower bound against the "
             "accounted ε, exposure and verbatim leaks (exit 3 on a violation)")),
            ("mia", _mia_arguments, "membership inference on a client's training examples"),
            ("inversion", _inversion_arguments, "embedding inversion of a client's uploads")):
        k = kinds.add_parser(name, help=text, description=text)
        add(k)
        k.set_defaults(fn=_audit)


def _bench(args: argparse.Namespace) -> int:
    """Baselines against semantic consensus, micro-benchmarks and the analytic traffic model;
    writes DIR/bench.json, DIR/bench.md and DIR/plots/."""
    from privsem.bench.suite import FEDERATIONS, PRIVACY, TASKS, run_bench

    if args.resume and args.out:
        print("--out and --resume both name the benchmark folder; give one", file=sys.stderr)
        return 2
    if args.resume:
        out = Path(args.resume)
        if not (out / "results").is_dir() and not (out / "data").is_dir():
            print(f"{out}: no benchmark to resume there (no results/ or data/ folder); run "
                  "without --resume and with --out to start one", file=sys.stderr)
            return 2
    elif args.out:
        out = _checked_out(args.out)
        if out.exists() and any(out.iterdir()):
            print(f"{out}: not empty; a benchmark folder is never overwritten, choose another "
                  "--out, or continue it with --resume", file=sys.stderr)
            return 2
    else:  # runs/bench, or the first runs/bench-k that does not exist
        base = "bench-quick" if args.quick else "bench-probe" if args.probe else "bench"
        out, k = Path("runs") / base, 1
        while out.exists():
            k += 1
            out = Path("runs") / f"{base}-{k}"
    for name, given, known in (("--task", args.task, TASKS),
                               ("--federation", args.federation, FEDERATIONS),
                               ("--privacy", args.privacy, PRIVACY)):
        bad = [g for g in given or [] if g not in known]
        if bad:
            print(f"{name} {bad[0]!r} is not known; use one of {', '.join(known)}",
                  file=sys.stderr)
            return 2
    if args.quick and args.probe:
        print("--quick and --probe: choose one size", file=sys.stderr)
        return 2
    from privsem.bench.suite import VARIANTS

    ablations = [v for v in VARIANTS if v not in ("semantic", "semantic+client")] if (
        args.ablations) else []
    result = run_bench(out, size_name="quick" if args.quick else "probe" if args.probe
                       else "full", tasks=args.task or None,
                       federations=args.federation or None,
                       privacy=args.privacy or None, micro=not args.no_micro,
                       resume=bool(args.resume), ablations=ablations,
                       only=args.method or (),
                       progress=lambda s: print(s, file=sys.stderr, flush=True))
    print((out / "bench.md").read_text(encoding="utf-8"))
    print(f"benchmark folder: {out} ({result['seconds'] / 60:.1f} min)")
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


def _node(args: argparse.Namespace) -> int:
    from privsem.runtime.flower.deploy import node_main

    return node_main(Path(args.deployment), args.client, superlink=args.superlink,
                     port=args.port)


def _deploy_config(args: argparse.Namespace) -> RunConfig:
    from privsem.config import load_config

    return load_config(args.config, preset=None if args.config else (args.preset or "smoke"),
                       overrides=args.set or [])


def _reused(out: Path) -> bool:
    if out.exists():
        print(f"{out}: already exists; a deployment folder is never reused", file=sys.stderr)
    return out.exists()


def _deploy(args: argparse.Namespace) -> int:
    """``privsem deploy trial``: the deployment on this machine's loopback, end to end."""
    import json

    from privsem.runtime.flower.deploy import trial

    cfg = _deploy_config(args)
    out = _checked_out(args.out) if args.out else _new_run_folder(f"{cfg.name}-deploy")
    if _reused(out):
        return 2
    kill = None if args.no_kill else (args.kill or cfg.clients[-1].id)
    summary = trial(cfg, out, kill=kill, kill_round=args.kill_round)
    print(json.dumps(summary, indent=1))
    return 0 if str(summary.get("status", "")).endswith("completed") else 1


def _deploy_init(args: argparse.Namespace) -> int:
    """``privsem deploy init``: the deployment folder for real hosts, no process started."""
    from privsem.runtime.flower.deploy import prepare

    cfg = _deploy_config(args)
    out = _checked_out(args.out)
    if _reused(out):
        return 2
    for name, path in prepare(cfg, out, hosts=tuple(args.host)).items():
        print(f"{name}: {path}")
    print(f"deployment folder: {out} (give each host only its part; see the README)")
    return 0


def _config_args(p: argparse.ArgumentParser, preset_help: str) -> None:
    p.add_argument("config", nargs="?", help="YAML or TOML configuration file")
    p.add_argument("--preset", help=preset_help)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field")


def _run_args(p: argparse.ArgumentParser, *, out: str, example: str, what: str) -> None:
    """The arguments ``privsem run`` and ``privsem simulate`` share."""
    p.add_argument("config", nargs="?", help="YAML or TOML configuration file")
    p.add_argument("--preset", help="built-in preset: demo, smoke or audit")
    p.add_argument("--out", help=f"run folder (default {out})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help=f"override a field, e.g. --set {example}")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help=f"continue an interrupted {what} after its last completed round")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv: list[str] | None = None) -> int:
    _quiet_known_noise()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap = argparse.ArgumentParser(prog="privsem", description=__doc__)
    sub = ap.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="run a federation (default preset: demo)")
    _run_args(r, out="runs/NAME", example="privacy.client.epsilon=4", what="run")
    r.set_defaults(fn=_run)
    sim = sub.add_parser("simulate", help="run a federation on Flower's simulation engine "
                         "(default preset: smoke)")
    _run_args(sim, out="runs/NAME-flower", example="flower.dropout=0.1", what="simulation")
    sim.add_argument("--clients", type=int, help="grow the federation to N clients (copies of "
                     "the configured ones, ids <id>-<i>)")
    sim.set_defaults(fn=_simulate)
    n = sub.add_parser("node", help="run one client's node of a Flower deployment (its "
                       "SuperNode with TLS and authentication, and its party host)")
    n.add_argument("deployment", help="the deployment folder (config.yaml, registry.json, pki/)")
    n.add_argument("--client", required=True, help="the client this node hosts")
    n.add_argument("--superlink", required=True, help="the SuperLink's address, host:port")
    n.add_argument("--port", type=int, required=True, help="the SuperNode's local port")
    n.set_defaults(fn=_node)
    dep = sub.add_parser("deploy", help="Flower deployments")
    dk = dep.add_subparsers(dest="deploy_cmd", required=True)
    tr = dk.add_parser("trial", help="a SuperLink, TLS, SuperNode authentication and a node per "
                       "client on loopback; one node killed mid-round; everything stopped")
    _config_args(tr, "built-in preset (default smoke)")
    tr.add_argument("--out", help="the deployment folder to create (default runs/NAME-deploy)")
    tr.add_argument("--kill", metavar="CLIENT", help="the client whose node is killed (default: "
                    "the last)")
    tr.add_argument("--kill-round", type=int, default=2, help="the round it is killed in")
    tr.add_argument("--no-kill", action="store_true", help="kill no node")
    tr.set_defaults(fn=_deploy)
    ini = dk.add_parser("init", help="write a deployment folder (configuration, registry, CA, "
                        "SuperLink certificate, node and identity keys) for real hosts")
    _config_args(ini, "built-in preset (default smoke)")
    ini.add_argument("--out", required=True, help="the deployment folder to create")
    ini.add_argument("--host", action="append", required=True,
                     help="a name or address the nodes reach the SuperLink by (repeatable); "
                     "it goes into the SuperLink's certificate")
    ini.set_defaults(fn=_deploy_init)
    c = sub.add_parser("check", help="which threat models a configuration defends, and why; "
                       "exits 1 when a claimed one does not hold")
    _config_args(c, "built-in preset: demo, smoke or audit")
    c.add_argument("--threat-model", action="append", metavar="NAME",
                   help="claim this threat model (repeatable); exit 1 if it does not hold")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(fn=_check)
    m = sub.add_parser("models", help="list built-in model names")
    m.set_defaults(fn=_models)
    d = sub.add_parser("demo-data", help="write the demo federation's files to DIR")
    d.add_argument("dir")
    d.set_defaults(fn=_demo_data)
    rep = sub.add_parser("report", help="write RUN_DIR/report.md and report.html from the run "
                         "folder (ε recomputed from its ledger)")
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.set_defaults(fn=_report)
    b = sub.add_parser("bench", help="semantic consensus against local-only, FedAvg, "
                       "centralised and zero-shot; micro-benchmarks; traffic at scale")
    b.add_argument("--quick", action="store_true",
                   help="tiny random models and small tasks (CI; a few minutes)")
    b.add_argument("--out", help="results folder (default runs/bench or runs/bench-quick)")
    b.add_argument("--resume", metavar="DIR",
                   help="continue the benchmark in DIR: keep every stored result whose inputs "
                   "match, run the rest, rewrite bench.json, bench.md and plots")
    b.add_argument("--task", action="append", help="knowledge or instructions (default both)")
    b.add_argument("--federation", action="append",
                   help="homogeneous or heterogeneous (default both)")
    b.add_argument("--privacy", action="append", help="dp or none (default both)")
    b.add_argument("--no-micro", action="store_true", help="skip the micro-benchmarks")
    b.add_argument("--probe", action="store_true",
                   help="the real models on a slice (instructions and knowledge, one "
                   "architecture, no DP, 2 rounds): for iterating, about 15 min per semantic "
                   "variant pair")
    b.add_argument("--ablations", action="store_true",
                   help="also run every semantic variant (encoder, operator, candidates, "
                   "schedule, confidence, label acceptance) in each cell")
    b.add_argument("--method", action="append",
                   help="run only this method or variant (repeatable), e.g. local, semantic, "
                   "semantic-mean")
    b.set_defaults(fn=_bench)
    _add_audit_parsers(sub)
    args = ap.parse_args(argv)
    if args.cmd is None:
        args = ap.parse_args(["run", *(argv or [])])
    try:
        return int(args.fn(args))
    except PrivsemError as e:
        print(f"privsem: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder or file the operating system refused (permissions, space)
        where = f" ({e.filename})" if e.filename else ""
        print(f"privsem: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
