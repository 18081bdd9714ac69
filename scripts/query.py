"""Send one request to the TorchServe that scripts/serve.py started, with its inference token.

    python scripts/query.py MODEL artifacts/sample_text.txt            # POST /predictions/MODEL
    python scripts/query.py MODEL --text "A sentence to classify."
    python scripts/query.py MODEL artifacts/sample_text.txt --explanations
    python scripts/query.py --metrics [--grep fusedbert]               # GET <metrics>/metrics

A ``.json`` file is sent as application/json (the QA format: {"question": ..., "context": ...}),
anything else as UTF-8 text. The answer is printed as indented JSON; a non-2xx status exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torchserve_control as ts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", help="registered model name")
    parser.add_argument("input", nargs="?", type=Path, help="request body file")
    parser.add_argument("--text", help="request body given inline (UTF-8 text)")
    parser.add_argument("--explanations", action="store_true", help="POST /explanations/MODEL (captum)")
    parser.add_argument("--metrics", action="store_true", help="print the Prometheus metrics instead")
    parser.add_argument("--grep", help="with --metrics: only lines containing this string")
    parser.add_argument("--run-dir", type=Path, default=ts.DEFAULT_RUN_DIR)
    args = parser.parse_args(argv)

    try:
        server = ts.Server.load(args.run_dir)
        if args.metrics:
            reply = server.call("metrics", "GET", "/metrics")
            lines = reply.body.decode().splitlines()
            print("\n".join(line for line in lines if args.grep is None or args.grep in line))
            return 0 if reply.status == 200 else 1
        if args.model is None or (args.input is None) == (args.text is None):
            parser.error("give a MODEL and exactly one of an input file or --text")
        body = args.input.read_bytes() if args.input else args.text.encode()
        content_type = "application/json" if args.input and args.input.suffix == ".json" else "text/plain"
        endpoint = "explanations" if args.explanations else "predictions"
        reply = server.call("inference", "POST", f"/{endpoint}/{args.model}", body, content_type=content_type)
    except (ts.ServeError, OSError) as error:
        print(f"query: {error}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(reply.json(), indent=2, ensure_ascii=False))
    except ValueError:
        print(reply.body.decode(errors="replace"))
    if not 200 <= reply.status < 300:
        print(f"query: HTTP {reply.status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
