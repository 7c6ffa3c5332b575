"""Evaluation throughput: crystalvlm's batched runner against batched HF `generate` (and a batch-1 loop), same process.

    .venv/bin/python benchmarks/eval_throughput.py --baseline-every 4   # 1 torch thread, 60 images, 528 questions
    .venv/bin/python benchmarks/eval_throughput.py --eval-images 20 --samples-per-task 96   # the first setting, 152
    .venv/bin/python benchmarks/eval_throughput.py --threads default \
        --samples-per-task 32 --rounds 1 --baseline-every 4           # torch's default thread count

Each run writes its figures under its thread count and setting in benchmarks/results/eval_throughput.json
and keeps the figures of other entries already there (each entry records its own settings, time and
load averages). The default setting (60 held-out images: all 360 POPE random and 168 MME questions)
replaced the first one (20 images, the first 96 questions of each task: 152), on which a 0.2 s pass
weighed the evaluation's fixed costs (result files, scoring, syncs) as much as a tenth of its
questions; the first setting's entry keeps its key (`threads_1`).

All paths answer the same benchmark samples (POPE and MME of a small shapes world) greedily with the
same model: the tiny recipe's sizes, read from `recipes/tiny.yaml` (now CLIP 48 px / patch 16 / 128
wide / 4 layers, so 9 image tokens; Llama 128 wide / 2 layers; a 1024-token BPE), random weights,
saved and loaded as an HF checkpoint.

- batched: `crystalvlm.eval.runner.evaluate` with `--batch-size` (default 32): an image's questions
  side by side, each image opened and preprocessed once, batches with a KV cache, and prefix sharing:
  the system prompt, each image and the question stem are computed once per batch
  (src/crystalvlm/infer/shared_prefix.py); answers cached to disk every chunk (synced while the next
  chunk generates); scored; result files written in crystalvlm's and lmms-eval's layouts (synced
  together, renamed in order).
- engine_only: the same engine on the same requests without the runner's cache, scoring and files.
- batched_no_prefix_sharing: the runner with `share_prefixes=False` (every prompt prefilled in full,
  left padded), as the runner was before prefix sharing.
- batched_hf_generate (the fair baseline): HF `generate` over batches of the same `--batch-size`, in
  task order, prompts rendered by the processor's chat template and left padded, `processor(texts,
  images)` per batch, greedy, decoded and stripped.
- batch1_hf_generate: what LLaVA-1.5's model_vqa_loader.py does, on HF-native parts: per sample, open
  the image, build the prompt with the processor's chat template, `processor(text, images)`, then
  `model.generate(do_sample=False)` with batch size 1, decode.

Each of `--repeats` passes answers every sample on every path, the paths in a rotating order, and a
path's figures are those of its fastest pass, so a load spike of a shared machine falls on single
passes; beside them, the median over the passes of the ratio taken within each pass (`..._median_pass`:
both paths measured seconds apart, under the same load). The 1-minute load average is recorded at
every slice. `--rounds` cuts a pass into slices
(an image's questions stay in one slice) that the paths take in turn; the default 1 keeps every batch
full (32 questions), as in a full evaluation, and pays the runner's fixed costs (result files,
scoring) once per pass. The baseline runs batch 1, so its samples/s does not depend on how many
samples it answers: `--baseline-every K` runs it on every K-th sample only (for slow settings).

Random weights rarely emit end-of-sequence, so every answer runs to its budget: `--max-new-tokens`
stands for answer length. The default 2 is a yes/no answer plus end-of-sequence (POPE, MME); the
script also runs 16 (a short phrase). Greedy answers of the paths are compared text for text.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "eval_throughput.json"


def build_tiny_checkpoint(world: Path, folder: Path) -> Path:
    """The tiny recipe's model shape with random weights, saved like a trained checkpoint."""
    from transformers import AutoTokenizer

    from crystalvlm.train.recipe import read_recipe

    from crystalvlm.data.templates import get_template
    from crystalvlm.models.build import ModelSpec, build_llava
    from crystalvlm.models.checkpoint import CheckpointInfo, save_checkpoint
    from crystalvlm.worlds.parts.tiny import tiny_llm_config, tiny_vision_config, train_tiny_tokenizer

    texts = [line for line in (world / "text_corpus.txt").read_text().splitlines() if line.strip()]
    train_tiny_tokenizer(texts, folder / "tokenizer", vocab_size=1024)
    vocab = len(AutoTokenizer.from_pretrained(folder / "tokenizer"))
    sizes = read_recipe("tiny")["prepare"]
    torch.manual_seed(0)
    spec = ModelSpec.from_dict({
        "vision": {"config": tiny_vision_config(**sizes["vision"])},
        "llm": {"config": tiny_llm_config(vocab, **sizes["llm"])},
        "tokenizer": str(folder / "tokenizer"),
        "projector": "mlp2x_gelu",
    })
    model, processor = build_llava(spec, chat_template=get_template("vicuna_v1").chat_template_jinja())
    return save_checkpoint(model, processor, folder / "checkpoint",
                           CheckpointInfo(template="vicuna_v1", image_mode="pad"))


def benchmark_tasks(world: Path, samples_per_task: int, max_new_tokens: int):
    """POPE (random split) and MME of the world, the first `samples_per_task` of each (0: all)."""
    from crystalvlm.eval.task_selection import build_tasks, first_samples, locate_benchmarks

    tasks = build_tasks(["pope_random", "mme"], locate_benchmarks(world), max_new_tokens=max_new_tokens)
    return [first_samples(task, samples_per_task) if samples_per_task else task for task in tasks]


def llava_style_answers(model, processor, samples, max_new_tokens: int) -> list[str]:
    """Batch 1, one `generate` per sample, as model_vqa_loader.py runs an evaluation."""
    from PIL import Image

    answers = []
    with torch.inference_mode():
        for sample in samples:
            with Image.open(sample.image) as file:
                image = file.convert("RGB")
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.prompt}]}]
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = processor(text=text, images=[image], return_tensors="pt")
            output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, num_beams=1)
            answers.append(processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:],
                                                      skip_special_tokens=True).strip())
    return answers


def batched_hf_answers(model, processor, samples, max_new_tokens: int, batch_size: int) -> list[str]:
    """The fair baseline: HF `generate` over batches of `batch_size` samples in task order, prompts
    left padded (as a decoder-only model's batched generation needs), greedy, decoded and stripped."""
    from PIL import Image

    answers = []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            images, texts = [], []
            for sample in chunk:
                with Image.open(sample.image) as file:
                    images.append(file.convert("RGB"))
                messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.prompt}]}]
                texts.append(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            inputs = processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
            output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens, num_beams=1,
                                    pad_token_id=processor.tokenizer.pad_token_id)
            answers += [text.strip() for text in processor.tokenizer.batch_decode(
                output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    return answers


def engine_answers(engine, samples, max_new_tokens: int) -> list[str]:
    """The engine alone on the runner's requests (each image opened once), without the runner's cache,
    scoring and result files: the part that compares with bare HF `generate`."""
    from crystalvlm.eval.runner import _request
    from crystalvlm.infer.engine import DecodingConfig

    opened: dict = {}
    requests = [_request(sample, opened) for sample in samples]
    return [result.text.strip() for result in engine.generate(requests, DecodingConfig(max_new_tokens=max_new_tokens))]


PATHS = ("batched", "engine_only", "batched_no_prefix_sharing", "batched_hf_generate", "batch1_hf_generate")


def split_by_image(tasks, rounds: int, index: int):
    """Slice `index` of `rounds`: every rounds-th image of each task, with all of its questions."""
    part = []
    for task in tasks:
        images = sorted({s.meta.get("image_key", str(s.image)) for s in task.samples()})
        mine = set(images[index::rounds])
        part.append(task.select([s.sample_id for s in task.samples() if s.meta.get("image_key", str(s.image)) in mine]))
    return part


def measure(world: Path, checkpoint: Path, work: Path, samples_per_task: int, batch_size: int,
            max_new_tokens: int, rounds: int, baseline_every: int, repeats: int = 1) -> dict:
    """The three paths over the same samples, taking turns in `rounds` slices (the order of the paths
    rotates from slice to slice); wall and CPU seconds are summed over the slices."""
    from crystalvlm.eval.runner import evaluate
    from crystalvlm.infer.engine import DecodingConfig, GenerationEngine

    tasks = benchmark_tasks(world, samples_per_task, max_new_tokens)
    shared = GenerationEngine.from_checkpoint(checkpoint, batch_size=batch_size)
    unshared = GenerationEngine(shared.model, shared.processor, "vicuna_v1", "pad", batch_size=batch_size,
                                share_prefixes=False)
    engines = {"batched": shared, "batched_no_prefix_sharing": unshared}
    decoding = DecodingConfig.parse("greedy")

    def run_batched(path: str, part, out: Path) -> list[str]:
        evaluate(engines[path], part, out, decoding, model_id=str(checkpoint), progress=False)
        answers = []
        for task in part:
            rows = (out / f"samples_{task.name}.jsonl").read_text().splitlines()
            answers += [json.loads(row)["response"] for row in rows]
        return answers

    # Warm-up of every path (first calls allocate and pick kernels), not timed.
    warm = [tasks[0].select([s.sample_id for s in tasks[0].samples()[:4]])]
    for path in engines:
        run_batched(path, warm, work / f"warmup_{path}")
    llava_style_answers(shared.model, shared.processor, warm[0].samples()[:2], max_new_tokens)
    batched_hf_answers(shared.model, shared.processor, warm[0].samples(), max_new_tokens, batch_size)
    engine_answers(shared, warm[0].samples(), max_new_tokens)

    best = {path: [float("inf"), float("inf"), 0] for path in PATHS}  # [wall s, cpu s, samples] of the best repeat
    passes: list[dict[str, list]] = []  # every repeat's [wall s, cpu s, samples] per path
    load_per_round = []
    for repeat in range(repeats):
        totals = {path: [0.0, 0.0, 0] for path in PATHS}
        answers: dict[str, list[str]] = {path: [] for path in PATHS}
        baseline_positions: list[int] = []  # indices (in answer order) of the samples the baseline answered
        for index in range(rounds):
            part = split_by_image(tasks, rounds, index)
            samples = [sample for task in part for sample in task.samples()]
            picked = list(range(0, len(samples), baseline_every))
            load_per_round.append(round(os.getloadavg()[0], 2))
            turn = index + repeat
            for path in PATHS[turn % len(PATHS):] + PATHS[: turn % len(PATHS)]:
                wall, cpu = time.perf_counter(), time.process_time()
                if path == "engine_only":
                    answers[path] += engine_answers(shared, samples, max_new_tokens)
                    count = len(samples)
                elif path == "batched_hf_generate":
                    answers[path] += batched_hf_answers(shared.model, shared.processor, samples, max_new_tokens,
                                                        batch_size)
                    count = len(samples)
                elif path == "batch1_hf_generate":
                    answers[path] += llava_style_answers(shared.model, shared.processor, [samples[i] for i in picked],
                                                         max_new_tokens)
                    count = len(picked)
                else:
                    answers[path] += run_batched(path, part, work / f"{path}_{max_new_tokens}_{repeat}_{index}")
                    count = len(samples)
                totals[path][0] += time.perf_counter() - wall
                totals[path][1] += time.process_time() - cpu
                totals[path][2] += count
            offset = len(answers["batched"]) - len(samples)
            baseline_positions += [offset + i for i in picked]
        for path in PATHS:  # each path's fastest repeat: a load spike of the shared machine falls on one repeat
            best[path] = [min(best[path][0], totals[path][0]), min(best[path][1], totals[path][1]), totals[path][2]]
        passes.append(totals)
    totals = best

    def median_pass_ratio(path: str, over: str, column: int) -> float:
        """The median over repeats of the ratio within one repeat (both paths measured seconds apart at
        most, under the same load), samples/s of `path` over `over`."""
        ratios = sorted((one[path][2] / one[path][column]) / (one[over][2] / one[over][column]) for one in passes)
        middle = len(ratios) // 2
        return round(ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2, 2)

    def figures(wall: float, cpu: float, count: int) -> dict:
        return {"samples": count, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                "samples_per_s": round(count / wall, 3), "samples_per_cpu_s": round(count / cpu, 3)}

    stats = {path: figures(*totals[path]) for path in PATHS}

    def ratio(path: str, over: str, key: str) -> float:
        return round(stats[path][key] / stats[over][key], 2)

    batched = answers["batched"]
    equal_baseline = sum(batched[i] == a for i, a in zip(baseline_positions, answers["batch1_hf_generate"]))
    equal_batched_hf = sum(a == b for a, b in zip(batched, answers["batched_hf_generate"]))
    equal_unshared = sum(a == b for a, b in zip(batched, answers["batched_no_prefix_sharing"]))
    equal_engine = sum(a == b for a, b in zip(answers["engine_only"], answers["batched_hf_generate"]))
    return {
        "max_new_tokens": max_new_tokens,
        "samples": len(batched),
        **stats,
        # The headline: the same batch size on both sides, HF generate with left padding.
        "speedup_wall_over_batched_hf_generate": ratio("batched", "batched_hf_generate", "samples_per_s"),
        "speedup_cpu_over_batched_hf_generate": ratio("batched", "batched_hf_generate", "samples_per_cpu_s"),
        # The same ratios taken within each repeat, their median over the repeats.
        "speedup_wall_over_batched_hf_generate_median_pass": median_pass_ratio("batched", "batched_hf_generate", 0),
        "speedup_cpu_over_batched_hf_generate_median_pass": median_pass_ratio("batched", "batched_hf_generate", 1),
        "engine_only_speedup_wall_over_batched_hf_generate_median_pass":
            median_pass_ratio("engine_only", "batched_hf_generate", 0),
        "speedup_wall_over_batched_hf_generate_no_prefix_sharing":
            ratio("batched_no_prefix_sharing", "batched_hf_generate", "samples_per_s"),
        # The engine alone (no cache file, scoring or result files) against the same bare HF generate.
        "engine_only_speedup_wall_over_batched_hf_generate": ratio("engine_only", "batched_hf_generate", "samples_per_s"),
        "engine_only_speedup_cpu_over_batched_hf_generate": ratio("engine_only", "batched_hf_generate", "samples_per_cpu_s"),
        "speedup_wall_over_batch1_hf_generate": ratio("batched", "batch1_hf_generate", "samples_per_s"),
        "speedup_cpu_over_batch1_hf_generate": ratio("batched", "batch1_hf_generate", "samples_per_cpu_s"),
        "batched_hf_generate_over_batch1_hf_generate": ratio("batched_hf_generate", "batch1_hf_generate", "samples_per_s"),
        "prefix_sharing_gain_wall": ratio("batched", "batched_no_prefix_sharing", "samples_per_s"),
        "answers_equal": equal_baseline == len(baseline_positions)
                         and equal_batched_hf == len(batched) == len(answers["batched_hf_generate"])
                         and equal_unshared == len(batched) == len(answers["batched_no_prefix_sharing"])
                         and equal_engine == len(batched),
        "answers_equal_engine_only_to_batched_hf_generate": f"{equal_engine}/{len(batched)}",
        "answers_equal_to_batched_hf_generate": f"{equal_batched_hf}/{len(batched)}",
        "answers_equal_to_batch1_hf_generate": f"{equal_baseline}/{len(baseline_positions)}",
        "answers_equal_shared_unshared": f"{equal_unshared}/{len(batched)}",
        "distinct_answers": len(set(batched)),
        "load_average_1min_per_round": load_per_round,
        # Every pass's [wall s, cpu s] per path (the paths of a pass ran one after another, in rotating order).
        "passes": [{path: [round(one[path][0], 3), round(one[path][1], 3)] for path in PATHS} for one in passes],
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def read_measurements(path: Path) -> dict:
    """Entries of earlier runs at other thread counts (a file of another layout is replaced)."""
    try:
        return dict(json.loads(path.read_text()).get("measurements", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def main(argv: list[str] | None = None) -> int:
    import datetime

    import transformers

    from crystalvlm.worlds.shapes.writer import write_shapes_world
    from crystalvlm.train.recipe import read_recipe

    default_threads = torch.get_num_threads()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples-per-task", type=int, default=0,
                        help="the first N samples of POPE and of MME; 0: all of them (with --eval-images 60: "
                             "360 POPE and 168 MME questions; with 20: 120 and 56)")
    parser.add_argument("--eval-images", type=int, default=60,
                        help="held-out images of the shapes world (6 POPE questions each; MME gets one image per 5, "
                             "2 questions each, in each of its 7 subtasks). The first setting measured was "
                             "--eval-images 20 --samples-per-task 96 (152 questions)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", default="2,16", help="answer lengths to measure, comma-separated")
    parser.add_argument("--threads", default="1",
                        help=f"torch threads, or 'default' (torch's own choice here: {default_threads})")
    parser.add_argument("--rounds", type=int, default=1, help="alternating slices of the samples per pass")
    parser.add_argument("--repeats", type=int, default=5,
                        help="passes over all the samples; each path's fastest pass counts (a shared machine's load "
                             "spikes fall on single passes), and the median of the per-pass ratios is given beside")
    parser.add_argument("--baseline-every", type=int, default=1,
                        help="run the batch-1 baseline on every K-th sample only (its samples/s does not depend on K)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    threads = default_threads if args.threads == "default" else int(args.threads)
    if threads < 1 or args.baseline_every < 1 or args.rounds < 1 or args.repeats < 1 or args.eval_images < 1:
        parser.error("--threads, --rounds, --repeats, --baseline-every and --eval-images must be at least 1")
    if args.samples_per_task < 0:
        parser.error("--samples-per-task must be at least 0 (0: all)")
    torch.set_num_threads(threads)
    budgets = [int(part) for part in args.max_new_tokens.split(",")]
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    with tempfile.TemporaryDirectory(prefix="eval_throughput_") as tmp:
        work = Path(tmp)
        # --eval-images held-out images: 6 POPE questions each per split, ceil(N / 5) images x 2 questions
        # per MME subtask (20: 120 and 56; 60: 360 and 168).
        image_size = int(read_recipe("tiny")["prepare"]["image_size"])
        write_shapes_world(work / "world", n_train=64, n_eval=args.eval_images, seed=0, image_size=image_size,
                           progress=False)
        checkpoint = build_tiny_checkpoint(work / "world", work / "model")
        runs = [measure(work / "world", checkpoint, work, args.samples_per_task, args.batch_size, budget,
                        args.rounds, args.baseline_every, args.repeats) for budget in budgets]

    # One entry per thread count and setting: the first setting (20 images, 96 samples per task) keeps its
    # plain key, so earlier entries stay comparable.
    key = f"threads_{threads}"
    if (args.eval_images, args.samples_per_task) != (20, 96):
        key += f"_images_{args.eval_images}_samples_{args.samples_per_task or 'all'}"
    measurements = read_measurements(args.out)
    measurements[key] = {
        "torch_threads": threads,
        "threads_setting": f"torch default ({default_threads})" if args.threads == "default" else "set explicitly",
        "measured_at": started,
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
        "settings": {"eval_images": args.eval_images, "samples_per_task": args.samples_per_task or "all",
                     "batch_size": args.batch_size, "rounds": args.rounds,
                     "repeats": args.repeats,
                     "baseline_every": args.baseline_every},
        "runs": runs,
    }
    report = {
        "benchmark": "eval_throughput",
        "what": "samples/s of crystalvlm's batched evaluation runner (with and without prefix sharing) and of its "
                "engine alone vs HF model.generate batched the same way (batch size, left padding) and a batch-1 "
                "loop of it (LLaVA-1.5 model_vqa_loader style), same samples, greedy, same process; one entry per "
                "torch thread count and setting (world size, samples per task)",
        "device": "cpu",
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "settings": {"model": "tiny recipe sizes (recipes/tiny.yaml: CLIP 48px/16/128w/4L, Llama 128w/2L), a 1024-token "
                              "BPE, random weights",
                     "tasks": ["pope_random", "mme"], "decoding": "greedy", "dtype": "float32"},
        "measurements": dict(sorted(measurements.items())),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")  # a killed run leaves the previous file whole
    partial.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(partial, args.out)

    print(f"cpu: {report['cpu']} ({report['cpu_count']} cores); torch {torch.__version__}, "
          f"transformers {transformers.__version__}")
    for name, entry in report["measurements"].items():
        note = "this run" if name == key else f"earlier run, {entry['measured_at']}"
        setting = entry["settings"]
        print(f"{name}: {setting.get('eval_images', 20)} held-out images, {setting['samples_per_task']} samples per task; "
              f"torch threads {entry['torch_threads']} ({entry['threads_setting']}; {note}; "
              f"load average {entry['load_average_before'][0]} -> {entry['load_average_after'][0]}):")
        for run in entry["runs"]:
            if "speedup_wall_over_batched_hf_generate" not in run:
                print(f"  answers of {run['max_new_tokens']:>2} tokens: recorded before the batched HF baseline")
                continue
            print(f"  answers of {run['max_new_tokens']:>2} tokens, {run['samples']} samples: "
                  f"batched {run['batched']['samples_per_s']:.2f}/s, "
                  f"without prefix sharing {run['batched_no_prefix_sharing']['samples_per_s']:.2f}/s, "
                  f"batched HF generate {run['batched_hf_generate']['samples_per_s']:.2f}/s, "
                  f"batch-1 HF generate {run['batch1_hf_generate']['samples_per_s']:.2f}/s "
                  f"({run['batch1_hf_generate']['samples']} samples)")
            if "speedup_wall_over_batched_hf_generate_median_pass" in run:
                print(f"    median of the per-pass ratios: {run['speedup_wall_over_batched_hf_generate_median_pass']:.2f}x "
                      f"(per CPU second {run['speedup_cpu_over_batched_hf_generate_median_pass']:.2f}x; the engine "
                      f"alone {run['engine_only_speedup_wall_over_batched_hf_generate_median_pass']:.2f}x)")
            print(f"    ratio over batched HF generate {run['speedup_wall_over_batched_hf_generate']:.2f}x "
                  f"(per CPU second {run['speedup_cpu_over_batched_hf_generate']:.2f}x; without prefix sharing "
                  f"{run['speedup_wall_over_batched_hf_generate_no_prefix_sharing']:.2f}x; the engine alone "
                  f"{run['engine_only_speedup_wall_over_batched_hf_generate']:.2f}x, per CPU second "
                  f"{run['engine_only_speedup_cpu_over_batched_hf_generate']:.2f}x), over batch-1 "
                  f"{run['speedup_wall_over_batch1_hf_generate']:.2f}x; answers equal: {run['answers_equal']} "
                  f"(batched HF {run['answers_equal_to_batched_hf_generate']}, batch-1 "
                  f"{run['answers_equal_to_batch1_hf_generate']}, unshared {run['answers_equal_shared_unshared']}, "
                  f"{run['distinct_answers']} distinct)")
    print(f"written: {args.out}")
    return 0 if all(run["answers_equal"] for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
