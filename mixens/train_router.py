"""Train the learned router: `python -m mixens.train_router --model NAME=PATH --model NAME=PATH --out FILE`.

Calibration texts (GSM8K train problems from a hub mirror, or a JSONL file of prompt/reference
pairs) are scored with every member under teacher forcing. Each step gives one example: the features
of the designated member (last hidden state, top probability, entropy) and, as the label, the member
that gives the reference's next token the higher probability (ties go to the designated member, the
cheap choice). A held-out share of the documents measures how often the classifier picks that member.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from mixens.ensemble import Ensemble, load_ensemble
from mixens.errors import ConfigError
from mixens.router_model import TrainedRouter, save_router, step_features, train_classifier
from mixens.strategies.averaging import Averaging
from mixens.teacher_forcing import TeacherForcing

_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations are not part of the prose


class _AllMembersWithFeatures(Averaging):
    """Every member runs (labels need all of them); the designated one also returns its hidden state."""

    def __init__(self, n_members: int, designated: int):
        super().__init__(n_members)
        self.designated = designated

    def wants_hidden(self, member: int) -> bool:
        return member == self.designated


def gsm8k_pairs(hub_mirror: str | Path, split: str = "train", limit: int | None = None) -> list[tuple[str, str]]:
    """(prompt, reference) pairs from a hub mirror's openai/gsm8k main split: the question, then the worked answer."""
    if not hub_mirror:
        raise ConfigError(
            "no hub mirror given; pass --hub-mirror PATH (or set MIXENS_HUB_MIRROR) to a folder laid out like the hub."
        )
    path = Path(hub_mirror) / "openai" / "gsm8k" / "main" / f"{split}.jsonl"
    if not path.is_file():
        raise ConfigError(f"no GSM8K {split} split at {path}; point --hub-mirror at a folder laid out like the hub.")
    pairs = []
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            pairs.append((f"Question: {row['question']}\nAnswer:", " " + _CALCULATOR.sub("", row["answer"])))
            if limit is not None and len(pairs) >= limit:
                break
    return pairs


def jsonl_pairs(path: str | Path, limit: int | None = None) -> list[tuple[str, str]]:
    """(prompt, reference) pairs from a JSONL file whose rows have "prompt" and "reference"."""
    pairs = []
    with Path(path).open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "prompt" not in row or "reference" not in row:
                raise ConfigError(f"{path} line {number} needs the keys 'prompt' and 'reference'.")
            pairs.append((row["prompt"], row["reference"]))
            if limit is not None and len(pairs) >= limit:
                break
    return pairs


def collect_steps(
    ensemble: Ensemble, designated: int, pairs: Sequence[tuple[str, str]], *, batch_size: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features [N, H+2], labels [N] (the better member) and the document of each step [N]."""
    every_member = ensemble.with_strategy(_AllMembersWithFeatures(len(ensemble.members), designated))
    prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
    features, labels, documents = [], [], []
    for forced in TeacherForcing(every_member, prompts, references, batch_size=batch_size, seed=seed):
        if not forced.rows:
            continue
        outputs = forced.step.outputs
        index, target = torch.tensor(forced.rows), torch.tensor(forced.targets)
        feats = step_features(outputs.hidden(designated).cpu()[index], outputs.raw(designated).cpu()[index])
        probs = torch.stack([outputs.raw(i).cpu()[index, target].double() for i in range(len(ensemble.members))], dim=1)
        best = probs.argmax(dim=1)
        best[probs[:, designated] >= probs.max(dim=1).values] = designated  # ties: the member already running
        features.append(feats)
        labels.append(best)
        documents.append(torch.tensor(forced.documents))
    return torch.cat(features), torch.cat(labels), torch.cat(documents)


def train_router(
    ensemble: Ensemble,
    pairs: Sequence[tuple[str, str]],
    *,
    designated: int = 0,
    held_out: float = 0.2,
    hidden_units: int = 0,
    epochs: int = 500,
    batch_size: int = 8,
    seed: int = 0,
) -> TrainedRouter:
    """Collect steps, train on the first documents, measure on the held-out rest."""
    features, labels, documents = collect_steps(ensemble, designated, pairs, batch_size=batch_size, seed=seed)
    n_docs = len(pairs)
    cut = n_docs - max(1, round(held_out * n_docs)) if held_out > 0 and n_docs > 1 else n_docs
    train = documents < cut
    classifier = train_classifier(
        features[train], labels[train], len(ensemble.members), hidden_units=hidden_units, epochs=epochs, seed=seed
    )
    test = ~train
    accuracy = None
    if test.any():
        accuracy = float((classifier.member_probs(features[test]).argmax(dim=1) == labels[test]).float().mean())
    names = [m.name for m in ensemble.members]
    info = {
        "documents": n_docs,
        "train_steps": int(train.sum()),
        "held_out_steps": int(test.sum()),
        "held_out_accuracy": accuracy,
        "label_share": {names[i]: float((labels == i).float().mean()) for i in range(len(names))},
        "hidden_units": hidden_units,
        "seed": seed,
    }
    return TrainedRouter(classifier, names, names[designated], info)


def _parse_model(text: str, index: int) -> dict:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ConfigError(f"--model {text!r} must be NAME=PATH (a hub id, local folder or packaged:<name>).")
    return {"name": name, "path": path, "weight": 1.0}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m mixens.train_router", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH, in ensemble order (2 or more)")
    parser.add_argument("--designated", help="the member that runs first (default: the first --model)")
    parser.add_argument("--data", default="gsm8k", help="'gsm8k' (train split of the hub mirror) or a JSONL file")
    parser.add_argument(
        "--hub-mirror",
        default=os.environ.get("MIXENS_HUB_MIRROR"),
        help="a folder laid out like the hub holding openai/gsm8k (default: $MIXENS_HUB_MIRROR)",
    )
    parser.add_argument("--limit", type=int, default=64, help="calibration documents")
    parser.add_argument("--held-out", type=float, default=0.2, help="share of documents kept for measuring")
    parser.add_argument("--hidden-units", type=int, default=0, help="0: logistic regression; >0: a small MLP")
    parser.add_argument("--epochs", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="where to write the router file (ensemble.router_path)")
    args = parser.parse_args(argv)

    specs = [{**_parse_model(m, i), "device": args.device} for i, m in enumerate(args.model)]
    names = [s["name"] for s in specs]
    if len(specs) < 2:
        raise ConfigError("--model must be given at least twice: a router chooses between members.")
    if args.designated is not None and args.designated not in names:
        raise ConfigError(f"--designated '{args.designated}' is not one of the models {names}.")
    if not 0 <= args.held_out < 1:
        raise ConfigError(f"--held-out must be in [0, 1), got {args.held_out}.")
    if args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}.")
    if args.data == "gsm8k":
        pairs = gsm8k_pairs(args.hub_mirror, "train", args.limit)
    elif Path(args.data).is_file():
        pairs = jsonl_pairs(args.data, args.limit)
    else:
        raise ConfigError(f"--data '{args.data}' is neither 'gsm8k' nor an existing JSONL file.")
    ensemble = load_ensemble(specs, "averaging", batch_size=args.batch_size)
    designated = names.index(args.designated) if args.designated else 0
    router = train_router(
        ensemble, pairs, designated=designated, held_out=args.held_out, hidden_units=args.hidden_units,
        epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    router.info["data"] = args.data
    path = save_router(args.out, router)
    print(json.dumps({"router_path": str(path), **router.info}, indent=2))
    return router.info


if __name__ == "__main__":
    try:
        main()
    except ConfigError as err:
        print(f"mixens.train_router: {err}", file=sys.stderr)
        sys.exit(2)
