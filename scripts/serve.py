"""Start TorchServe with fusedbert's configuration on loopback and wait until the models are READY.

    python scripts/serve.py                                  # every .mar in model_store/
    python scripts/serve.py --models my_tc=BERTSeqClassification.mar --run-dir .torchserve

Prints the URLs and where the tokens are; stop it with scripts/stop.py (same --run-dir).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torchserve_control as ts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", type=Path, default=Path("model_store"))
    parser.add_argument("--models", nargs="*", default=[], metavar="NAME=FILE.mar",
                        help="models to load (default: every .mar in the model store)")
    parser.add_argument("--run-dir", type=Path, default=ts.DEFAULT_RUN_DIR,
                        help="where this instance keeps its config, key file, logs and pid (default: %(default)s)")
    parser.add_argument("--config", type=Path, default=ts.SHIPPED_CONFIG)
    parser.add_argument("--free-ports", action="store_true",
                        help="bind every endpoint to a free loopback port instead of the config's 8080-8082")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for READY (default: %(default)s)")
    args = parser.parse_args(argv)

    try:
        models = ts.parse_model_args(args.models, args.model_store)
        print(f"[1/2] starting TorchServe with {', '.join(f'{n}={m}' for n, m in models.items())}")
        server = ts.start(args.model_store, models, run_dir=args.run_dir, config=args.config,
                          ports=ts.loopback_ports() if args.free_ports else None)
        print(f"[2/2] waiting for the workers (up to {args.timeout:.0f} s)")
        try:
            ts.wait_until_ready(server, timeout=args.timeout)
        except ts.ServeError:
            ts.stop(args.run_dir)
            raise
    except ts.ServeError as error:
        print(f"serve: {error}", file=sys.stderr)
        return 1

    print(f"\nTorchServe is up (pid {server.pid}), on loopback only:")
    for api, url in server.urls.items():
        print(f"  {api:<10} {url}")
    for name in server.models:
        print(f"  POST {server.urls['inference']}/predictions/{name}")
    print(f"Tokens: {server.key_file} (\"inference\" and \"management\" keys; send 'Authorization: Bearer <key>')")
    print(f"Logs:   {Path(server.run_dir) / 'logs'}")
    print(f"Query:  python scripts/query.py {server.models[0]} <input file> --run-dir {args.run_dir}")
    print(f"Stop:   python scripts/stop.py --run-dir {args.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
