"""Stop the TorchServe that scripts/serve.py started from a run directory, and only that one.

    python scripts/stop.py [--run-dir .torchserve]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torchserve_control as ts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=ts.DEFAULT_RUN_DIR)
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for a clean shutdown before killing (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        stopped = ts.stop(args.run_dir, timeout=args.timeout)
    except ts.ServeError as error:
        print(f"stop: {error}", file=sys.stderr)
        return 1
    print("TorchServe stopped." if stopped else f"The TorchServe started from {args.run_dir} was no longer running.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
