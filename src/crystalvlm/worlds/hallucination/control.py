"""The control of the hallucination study: the same recipe, sizes and seed with every bias off (the
plain shapes world's training data), evaluated with greedy decoding only. Its CHAIR and adversarial
POPE are what the biased world's model is compared with (docs/hallucination.md).

    python -m crystalvlm.worlds.hallucination.control --out runs/hallucination-control [--seed 0]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crystalvlm.worlds.hallucination.study import run_study
from crystalvlm.worlds.registry import get_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/hallucination-control", help="output folder (a rerun continues)")
    parser.add_argument("--seed", type=int, default=0, help="the study's seed")
    args = parser.parse_args()
    report = run_study(get_world("hallucination"), Path(args.out), seed=args.seed,
                       extra_overrides=("prepare.biases={}",), methods=("greedy",))
    print(json.dumps(report["methods"]["greedy"], indent=2))


if __name__ == "__main__":
    main()
