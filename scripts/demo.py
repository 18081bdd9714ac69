"""Build an archive per mode, serve them all with TorchServe on loopback, ask each one something, stop.

    python scripts/demo.py [--model-store model_store] [--skip-build]

(``scripts/demo`` installs everything first, then runs this.) Offline, the model is the embedded
all-MiniLM-L6-v2: its sentence embeddings are real, but it has no trained classification, QA or
token-classification head, so those answers show the plumbing, not knowledge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import build_mar
import torchserve_control as ts

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "artifacts"
# configs/ folders served by the demo: sequence classification in save_mode "pretrained", so that it
# also answers /explanations; the other modes as fused TorchScript.
ARCHIVES = ("sequence_classification_captum", "question_answering", "ner", "feature_extraction")
UNTRAINED = "(untrained head: MiniLM ships none for this mode; a fine-tuned checkpoint gives real answers)"


def banner(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def ask(server: ts.Server, model: str, body: str | dict, endpoint: str = "predictions"):
    payload, content_type = ((json.dumps(body).encode(), "application/json") if isinstance(body, dict)
                             else (body.encode(), "text/plain"))
    reply = server.call("inference", "POST", f"/{endpoint}/{model}", payload, content_type=content_type)
    if reply.status != 200:
        raise ts.ServeError(f"/{endpoint}/{model} answered HTTP {reply.status}: {reply.body[:300]!r}")
    return reply.json()


def show_classification(server: ts.Server) -> None:
    text = (ARTIFACTS / "sample_text.txt").read_text().strip()
    result = ask(server, "sequence_classification_captum", text)
    print(f"text:   {text}")
    print(f"label:  {result['label']} ({result['score']:.3f})  {UNTRAINED}")
    print("scores: " + ", ".join(f"{label} {score:.3f}" for label, score in result["scores"].items()))


def show_explanation(server: ts.Server) -> None:
    text = (ARTIFACTS / "sample_text.txt").read_text().strip()
    result = ask(server, "sequence_classification_captum", text, endpoint="explanations")
    ranked = sorted(zip(result["words"], result["importances"]), key=lambda pair: -abs(pair[1]))
    print("Integrated Gradients on the embeddings (captum), the tokens that weigh most:")
    print("  " + ", ".join(f"{word} {importance:+.2f}" for word, importance in ranked[:6]))


def show_question_answering(server: ts.Server) -> None:
    sample = json.loads((ARTIFACTS / "sample_question_answering.json").read_text())
    result = ask(server, "question_answering", sample)
    print(f"question: {sample['question']}")
    print(f"answer:   {result['answer']!r} (context[{result['start']}:{result['end']}], score {result['score']:.2g})")
    print(f"          {UNTRAINED}")


def show_token_classification(server: ts.Server) -> None:
    text = (ARTIFACTS / "sample_token_classification.txt").read_text().strip()
    entities = ask(server, "ner", text)
    print(f"text:     {text}")
    print("entities: " + ("; ".join(f"{e['word']} {e['entity']} ({e['score']:.2f})" for e in entities[:8]) or "none"))
    print(f"          {UNTRAINED}")


def show_feature_extraction(server: ts.Server) -> bool:
    sentences = {
        "anchor": "How do I reset my password?",
        "paraphrase": "What are the steps to change my password?",
        "unrelated": "The orchestra played Beethoven's ninth symphony last night.",
    }
    embeddings = {name: ask(server, "feature_extraction", text)["embedding"] for name, text in sentences.items()}

    def cosine(a: str, b: str) -> float:  # the embeddings come L2-normalized
        return sum(x * y for x, y in zip(embeddings[a], embeddings[b]))

    for name, text in sentences.items():
        print(f"{name:>10}: {text}")
    paraphrase, unrelated = cosine("anchor", "paraphrase"), cosine("anchor", "unrelated")
    print(f"cosine(anchor, paraphrase) = {paraphrase:.3f}   cosine(anchor, unrelated) = {unrelated:.3f}")
    ranked = paraphrase > unrelated
    print("the paraphrase scores higher: real MiniLM embeddings through the fused encoder" if ranked
          else "UNEXPECTED: the unrelated sentence scored higher")
    return ranked


def show_metrics(server: ts.Server) -> None:
    reply = server.call("metrics", "GET", "/metrics")
    wanted = ("RealTokens", "PaddedTokens", "PaddingRatio", "BatchSize", "ModelTime")
    lines = [line for line in reply.body.decode().splitlines() if line.startswith(wanted)]
    print(f"{server.urls['metrics']}/metrics, the handler's metrics:")
    print("\n".join("  " + line for line in sorted(lines)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-store", type=Path, default=REPO_ROOT / "model_store")
    parser.add_argument("--run-dir", type=Path, default=REPO_ROOT / ".torchserve-demo")
    parser.add_argument("--skip-build", action="store_true", help="serve the archives already in the model store")
    args = parser.parse_args(argv)
    started = time.monotonic()

    if not args.skip_build:
        for name in ARCHIVES:
            banner(f"building {name}.mar")
            if build_mar.main([name, "--export-path", str(args.model_store)]) != 0:
                return 1

    banner("starting TorchServe (loopback, free ports, token auth on)")
    try:
        server = ts.start(args.model_store, {name: f"{name}.mar" for name in ARCHIVES}, run_dir=args.run_dir,
                          ports=ts.loopback_ports())
        try:
            ts.wait_until_ready(server)
            print(f"inference {server.urls['inference']}, tokens in {server.key_file}")
            banner("sequence classification: POST /predictions/sequence_classification_captum")
            show_classification(server)
            banner("explanations: POST /explanations/sequence_classification_captum")
            show_explanation(server)
            banner("question answering: POST /predictions/question_answering")
            show_question_answering(server)
            banner("token classification (NER tags): POST /predictions/ner")
            show_token_classification(server)
            banner("feature extraction: POST /predictions/feature_extraction")
            ranked = show_feature_extraction(server)
            banner("metrics")
            show_metrics(server)
        finally:
            banner("stopping TorchServe")
            ts.stop(args.run_dir)
            print("stopped")
    except ts.ServeError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    print(f"\nDemo done in {time.monotonic() - started:.0f} s.")
    return 0 if ranked else 1


if __name__ == "__main__":
    sys.exit(main())
