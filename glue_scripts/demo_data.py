#!/usr/bin/env python
"""Generate the small sentiment set of the offline demo: templated reviews, negation and contrast included.

A review is positive or negative by its adjective; ``not`` flips it, and in "A but B" the second
clause decides. Words and templates are fixed, sentences are drawn with ``--seed``; the files are
``train.csv`` and ``validation.csv`` with columns ``sentence,label`` (label ``positive``/``negative``)::

    python glue_scripts/demo_data.py --output_dir results/demo/data
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

SUBJECTS = [
    "the film",
    "this movie",
    "the plot",
    "the acting",
    "the soundtrack",
    "the ending",
    "the cast",
    "the script",
]
POSITIVE = ["wonderful", "brilliant", "moving", "delightful", "superb", "charming", "gripping", "funny"]
NEGATIVE = ["dull", "awful", "boring", "clumsy", "tedious", "forgettable", "messy", "bland"]
ADVERBS = ["really", "truly", "quite", "rather", "very"]


def review(rng: random.Random) -> tuple[str, str]:
    """One (sentence, label) pair."""
    positive = rng.random() < 0.5
    adjective = rng.choice(POSITIVE if positive else NEGATIVE)
    subject = rng.choice(SUBJECTS)
    form = rng.randrange(4)
    if form == 0:
        text = f"{subject} was {adjective}"
    elif form == 1:
        text = f"i found {subject} {rng.choice(ADVERBS)} {adjective}"
    elif form == 2:
        positive = not positive
        text = f"{subject} was not {adjective} at all"
    else:
        first = rng.choice(NEGATIVE if positive else POSITIVE)
        text = f"{rng.choice(SUBJECTS)} was {first} but {subject} was {adjective}"
    return text + " .", "positive" if positive else "negative"


def write(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--train_size", type=int, default=800)
    parser.add_argument("--validation_size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    write(output / "train.csv", [review(rng) for _ in range(args.train_size)])
    write(output / "validation.csv", [review(rng) for _ in range(args.validation_size)])
    print(f"wrote {args.train_size} + {args.validation_size} reviews to {output}/{{train,validation}}.csv")


if __name__ == "__main__":
    main()
