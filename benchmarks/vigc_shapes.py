"""VIGC on the shapes world, scored against the truth: question validity, answer accuracy and
hallucination rate before and after the iterative correction, and a finetune with VIGC data added vs
without (docs/data-engine.md).

    python benchmarks/vigc_shapes.py --start RUN/start/finetune/final --out /tmp/vigc

1. a VIG model: the starting model finetuned on VIG records ("Generate a color question about the
   image and answer it." -> "Question: ... Answer: ...") mixed with as many ordinary world records,
   so it still answers questions (the correction asks it plain questions);
2. VIGC on unlabelled world images: questions of each type, answers, then correction;
3. every pair judged by the world's oracle (worlds/shapes/vigc.py);
4. the starting model finetuned on R ground-truth records, and on the same R plus the VIGC records
   (corrected, and uncorrected), each scored on the engine's probe.
Every step writes its result under --out and is skipped when rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _finetune(start: Path, records: list[dict], images: Path, out: Path, epochs: float, seed: int = 0) -> Path:
    from crystalvlm.data.dataset import DataSource
    from crystalvlm.dataengine.finetune import StageFinetuner
    from crystalvlm.worlds.shapes.engine import engine_stage

    out.mkdir(parents=True, exist_ok=True)
    if records:  # empty: the finetune finished in an earlier run, and its records are already there
        (out / "records.json").write_text(json.dumps(records))
    return StageFinetuner(engine_stage(epochs), progress=False).finetune(start, DataSource(out / "records.json", images),
                                                                          out / "train", seed)


def _probe(checkpoint: Path, folder: Path, per_capability: int) -> dict:
    from crystalvlm.dataengine.loop import capability_scores
    from crystalvlm.worlds.shapes.engine import ShapesProbe

    done = folder / "probe.json"
    if done.is_file():
        return json.loads(done.read_text())
    probe = ShapesProbe(per_capability=per_capability, progress=False)
    overall, scores = capability_scores(probe.evaluate(checkpoint, folder / "eval"), probe.capabilities)
    result = {"overall": overall, "scores": scores}
    done.write_text(json.dumps(result, indent=2))
    return result


def _rates(judged: list[dict], key: str) -> float:
    valid = [j for j in judged if j["valid"]]
    return sum(j[key] for j in valid) / len(valid) if valid else 0.0


def main() -> None:
    from crystalvlm.dataengine.vigc import run_vigc, vigc_records
    from crystalvlm.infer.engine import GenerationEngine
    from crystalvlm.worlds.shapes.engine import (
        CAPABILITIES, ShapesProbe, unlabelled_scene, world_records, write_unlabelled_images,
    )
    from crystalvlm.worlds.shapes.vigc import (
        VIGC_QUESTION_SUFFIX, VIGC_QUESTION_TYPES, judge_pair, scene_questions, vig_training_records,
    )

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", required=True, help="the starting checkpoint (the engine's, RUN/start/finetune/final)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--vig-records", type=int, default=3000, help="VIG training records")
    parser.add_argument("--images", type=int, default=1000, help="unlabelled images")
    parser.add_argument("--per-type", type=int, default=100, help="VIGC pairs asked for per question type")
    parser.add_argument("--base-records", type=int, default=600, help="ground-truth records of the finetune comparison")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs of every finetune")
    parser.add_argument("--probe-size", type=int, default=100, help="probe questions per capability")
    args = parser.parse_args()
    out, start = Path(args.out), Path(args.start)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    excluded = ShapesProbe(per_capability=args.probe_size, progress=False).signatures()

    # 1. the VIG model
    vig_dir = out / "vig_model"
    data = vig_dir / "data"
    if not (vig_dir / "train" / "finetune" / "final" / "config.json").is_file():
        (data / "images").mkdir(parents=True, exist_ok=True)
        per = max(1, args.vig_records // len(CAPABILITIES))
        mixed = vig_training_records(args.vig_records, data, excluded=excluded)
        mixed += world_records({name: per for name in CAPABILITIES}, data, seed=99, excluded=excluded,
                               namespace="shapes-vig-keep")
    else:
        mixed = []
    vig_model = _finetune(start, mixed, data / "images", vig_dir, args.epochs)

    # 2. VIGC on unlabelled images
    pairs_file = out / "vigc_pairs.json"
    images = write_unlabelled_images(out / "unlabelled", args.images, excluded=excluded)
    if not pairs_file.is_file():
        engine = GenerationEngine.from_checkpoint(vig_model, batch_size=32)
        counts = {kind: args.per_type for kind in VIGC_QUESTION_TYPES}
        batch = run_vigc(engine, images, counts, seed=0, question_suffix=VIGC_QUESTION_SUFFIX,
                         question_types=VIGC_QUESTION_TYPES)
        pairs = [{"image": item.image.name, "type": item.question_type, "question": item.question,
                  "answer": item.answer, "corrected": item.corrected, "iterations": item.iterations}
                 for item in batch.items]
        pairs_file.write_text(json.dumps({"pairs": pairs, "dropped": batch.dropped}, indent=1))
    stored = json.loads(pairs_file.read_text())
    pairs, dropped = stored["pairs"], stored["dropped"]

    # 3. judged against the truth
    tables: dict[int, dict] = {}
    before, after = [], []
    for pair in pairs:
        index = int(pair["image"].split("_")[1].split(".")[0])
        if index not in tables:
            tables[index] = scene_questions(unlabelled_scene(index, excluded=excluded))
        before.append(judge_pair(pair["question"], pair["answer"], pair["type"], tables[index]))
        after.append(judge_pair(pair["question"], pair["corrected"], pair["type"], tables[index]))
    asked = len(pairs) + len(dropped)
    quality = {
        "asked": asked, "parsed": len(pairs), "dropped": len(dropped),
        "question_validity": sum(j["valid"] for j in before) / max(1, len(pairs)),
        "question_of_requested_type": sum(j["of_type"] for j in before) / max(1, len(pairs)),
        "answer_accuracy": {"before": _rates(before, "right"), "after": _rates(after, "right")},
        "hallucination_rate": {"before": _rates(before, "hallucination"), "after": _rates(after, "hallucination")},
        "answers_changed_by_correction": sum(p["answer"] != p["corrected"] for p in pairs),
        "mean_iterations": sum(p["iterations"] for p in pairs) / max(1, len(pairs)),
        "per_type": {},
    }
    for kind in VIGC_QUESTION_TYPES:
        chosen = [i for i, p in enumerate(pairs) if p["type"] == kind]
        quality["per_type"][kind] = {
            "parsed": len(chosen), "valid": sum(before[i]["valid"] for i in chosen) / max(1, len(chosen)),
            "accuracy_before": _rates([before[i] for i in chosen], "right"),
            "accuracy_after": _rates([after[i] for i in chosen], "right")}

    # 4. finetunes: ground truth only, plus VIGC (corrected), plus VIGC (uncorrected)
    comparison = {}
    base_dir = out / "finetune_base"
    (base_dir / "images").mkdir(parents=True, exist_ok=True)
    per = max(1, args.base_records // len(CAPABILITIES))
    base = world_records({name: per for name in CAPABILITIES}, base_dir, seed=7, excluded=excluded,
                         namespace="shapes-vigc-base")
    from crystalvlm.dataengine.vigc import VigcItem

    items = [VigcItem(out / "unlabelled" / p["image"], p["type"], p["question"], p["answer"], p["corrected"])
             for p in pairs]
    valid_items = items  # VIGC does not know the truth: every parsed pair is used
    for name, extra in (("without_vigc", []),
                        ("with_vigc_corrected", vigc_records(valid_items, base_dir / "images", "vigc", VIGC_QUESTION_SUFFIX)),
                        ("with_vigc_uncorrected", vigc_records(valid_items, base_dir / "images", "vigc-raw",
                                                               VIGC_QUESTION_SUFFIX, corrected=False))):
        checkpoint = _finetune(start, base + extra, base_dir / "images", out / name, args.epochs)
        comparison[name] = {"records": len(base) + len(extra), **_probe(checkpoint, out / name, args.probe_size)}
    comparison["start"] = _probe(start, out / "start_probe", args.probe_size)
    result = {"settings": vars(args), "quality": quality, "finetune": comparison,
              "seconds": round(time.time() - started, 1)}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    main()
