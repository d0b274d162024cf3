"""Write dataset.jsonl: the `word -> code` task the simulated LM learns from demos (dspy_pool/simlm/learnable.py).

    python examples/optimize/make_dataset.py    # rewrites examples/optimize/dataset.jsonl

Deterministic: a fixed word list, a fixed shuffle, 40 train and 30 dev
examples, each {"split", "inputs": {"word"}, "outputs": {"code"}}, with the
code from the simulated LM's hidden rule (reversed, capitals, letter count).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dspy_pool.simlm.learnable import code_for  # noqa: E402

WORDS = """
anchor apple autumn bamboo banana basket beacon breeze bridge butter candle canyon carpet castle cherry
circle cloud copper cotton crystal dancer desert dolphin dragon eagle ember engine falcon feather forest
fossil garden ginger glacier granite guitar hammer harbor harvest helmet honey island jacket jasmine jungle
kettle kingdom ladder lantern lemon lizard magnet mango marble meadow mirror monkey mosaic needle nectar
ocean orbit orchid oyster paddle parrot pebble pepper planet pocket puzzle quartz rabbit raven ribbon river
rocket saddle salmon silver spiral statue sunset tablet thunder timber tunnel valley velvet violin walnut
window winter wizard yellow zephyr
""".split()

SEED = 11
TRAIN, DEV = 40, 30


def examples() -> list[dict]:
    words = sorted(set(WORDS))
    random.Random(SEED).shuffle(words)
    rows = []
    for split, chosen in (("train", words[:TRAIN]), ("dev", words[TRAIN:TRAIN + DEV])):
        rows += [{"split": split, "inputs": {"word": w}, "outputs": {"code": code_for(w)}} for w in chosen]
    return rows


def main() -> None:
    path = Path(__file__).with_name("dataset.jsonl")
    path.write_text("".join(json.dumps(row) + "\n" for row in examples()))
    print(f"wrote {path} ({TRAIN} train, {DEV} dev)")


if __name__ == "__main__":
    main()
