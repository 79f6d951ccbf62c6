"""The `gpt-stats` command line: `run CONFIG [--set key=value ...]`, `report RUN_DIR` and
`compare RUN_A RUN_B [...] --out PAGE.html`.

User mistakes (`UserError`) print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from tasks.errors import RunError, UserError, os_failure


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt-stats", description="Statistics of transformer hidden states, on Ray.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run the workflow described by a YAML config")
    r.add_argument("config", help="YAML config file, e.g. configs/demo.yaml")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set sample.size=500 (repeatable)")
    r.add_argument("--fresh", action="store_true",
                   help="delete the results already in run.out (of this or another config) instead of resuming")
    rep = sub.add_parser("report", help="redraw plots/ and report.html of a run directory from its Parquet files")
    rep.add_argument("run_dir")
    cmp = sub.add_parser("compare", help="one page putting runs side by side per layer and site")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run directories")
    cmp.add_argument("--out", default="compare.html", help="the page to write (default: compare.html)")
    return p


def _report(run_dir: str) -> None:
    from tasks.report.plots import draw_plots
    from tasks.report.data import check_run_dir
    from tasks.report.page import write_report
    from tasks.storage import RunStore

    store = RunStore(run_dir)
    check_run_dir(store)
    for p in draw_plots(store):
        logging.getLogger("gpt_stats").info("wrote %s", store.path(p))
    logging.getLogger("gpt_stats").info("wrote %s", write_report(store))


def _compare(run_dirs: list[str], out: str) -> None:
    from pathlib import Path

    from tasks.report.page import write_compare

    if Path(out).is_dir():
        raise UserError(f"--out {out!r} is a directory; give the page's file name, e.g. --out {Path(out) / 'compare.html'}")
    logging.getLogger("gpt_stats").info("wrote %s", write_compare(run_dirs, out))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.command == "run":
            from workflows.config import load_config

            cfg = load_config(args.config, args.overrides)
            from workflows.driver import run  # after the config: its mistakes are found without loading torch and Ray
            out = run(cfg, fresh=args.fresh)
            logging.getLogger("gpt_stats").info("results in %s", out)
        elif args.command == "compare":
            _compare(args.run_dirs, args.out)
        else:
            _report(args.run_dir)
    except UserError as exc:
        print(f"gpt-stats: error: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"gpt-stats: run failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM during a run (workflows/interrupts.py)
        from workflows.interrupts import exit_status, received

        print(f"gpt-stats: interrupted ({received().name}); rerun the same command to resume", file=sys.stderr)
        return exit_status()
    except Exception as exc:
        if (failure := os_failure(exc)) is None:
            raise
        print(f"gpt-stats: run failed: {failure}", file=sys.stderr)  # disk full or the like, in any stage
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
