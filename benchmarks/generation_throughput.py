"""Generation throughput of the inference engine against `transformers`, and the cost of OPERA and VCD.

    .venv/bin/python benchmarks/generation_throughput.py [--prompts 32] [--max-new-tokens 32] [--device cpu]

A Llava model at the quickstart's scale (recipes/tiny.yaml: CLIP vision 64 px, patch 8, hidden 128,
4 layers; Llama LLM hidden 256, 4 layers; a byte-level BPE tokenizer of 1024 tokens), random weights,
N prompts each with its own image. Measured in one process, on the same prompts:

1. throughput: `GenerationEngine` batched greedy decoding vs HF `model.generate` (do_sample=False) over
   batches of the same size with left padding (the fair baseline), and vs a batch-1 loop of it, in
   generated tokens per second; the ratios engine / HF. The two must produce
   the same tokens (checked and reported: batched greedy computes what each request computes alone);
2. OPERA vs beam search (same number of beams), wall time ratio, on a few prompts: OPERA probes
   `num_candidates` tokens per beam and step with eager attention and decodes one request at a time;
   beam search is reported both batched (as the engine runs it) and one request at a time;
3. VCD vs greedy (both batched through the engine), wall time ratio: VCD runs every row twice.

Each figure is the best of `--repeats` rounds (the paths taken in turn), after a warm-up run of each path. Random weights rarely
emit end-of-sequence, so nearly every answer runs to `--max-new-tokens`; token counts are counted,
not assumed. Results, with device, versions, threads and settings: benchmarks/results/generation_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageDraw

from crystalvlm.data.templates import Turn, get_template
from crystalvlm.infer.decoding.config import DecodingConfig
from crystalvlm.infer.engine import GenerationEngine, GenerationRequest
from crystalvlm.models.build import ModelSpec, PartSpec, build_llava
from crystalvlm.worlds.parts.tiny import tiny_llm_config, tiny_vision_config, train_tiny_tokenizer

RESULTS = Path(__file__).resolve().parent / "results" / "generation_throughput.json"
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40),
           "purple": (130, 50, 170), "orange": (240, 140, 20)}
SHAPES = ("square", "circle", "triangle")
QUESTIONS = (
    "What colour is the {shape}?",
    "Describe the image briefly.",
    "Is there a {colour} {shape} in the image? Answer the question using a single word or phrase.",
    "How many shapes are there, and what colours do they have? Give a short, complete answer.",
    "Where is the {colour} {shape}?",
    "Describe the image in detail: every shape, its colour, its size and where it is in the picture.",
)


@dataclass
class Settings:
    prompts: int
    max_new_tokens: int
    batch_size: int
    opera_prompts: int
    opera_max_new_tokens: int
    num_beams: int
    repeats: int
    device: str
    threads: int
    seed: int


# ---------------------------------------------------------------------------- the model and the prompts
def corpus() -> list[str]:
    lines = []
    for colour in COLOURS:
        for shape in SHAPES:
            lines += [f"a {colour} {shape}", f"There is a {colour} {shape} in the image.",
                      f"The {shape} is {colour}.", f"Is there a {colour} {shape}? Yes"]
    return (lines + [q.format(colour="red", shape="square") for q in QUESTIONS]) * 10


def build_engine(folder: Path, settings: Settings) -> GenerationEngine:
    """A random-weight Llava at the tiny recipe's scale, with the vicuna_v1 template of the finetune stage."""
    train_tiny_tokenizer(corpus(), folder, vocab_size=1024)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(folder))
    torch.manual_seed(settings.seed)
    spec = ModelSpec(
        vision=PartSpec(config=tiny_vision_config(image_size=64, patch_size=8, hidden=128, layers=4)),
        llm=PartSpec(config=tiny_llm_config(vocab, hidden=256, layers=4)),
        tokenizer=str(folder),
    )
    model, processor = build_llava(spec, chat_template=get_template("vicuna_v1").chat_template_jinja())
    model.to(settings.device)
    return GenerationEngine(model, processor, "vicuna_v1", "pad", batch_size=settings.batch_size)


def make_requests(count: int, seed: int) -> list[GenerationRequest]:
    """Prompts of different lengths, each with an image of one to three shapes at a random size."""
    rng = np.random.default_rng(seed)
    names = list(COLOURS)
    requests = []
    for index in range(count):
        width, height = (int(side) for side in rng.integers(40, 97, size=2))
        image = Image.new("RGB", (width, height), (245, 245, 245))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 4))):
            colour, shape = names[int(rng.integers(len(names)))], SHAPES[int(rng.integers(len(SHAPES)))]
            x, y = int(rng.integers(0, width - 16)), int(rng.integers(0, height - 16))
            box = (x, y, x + 16, y + 16)
            if shape == "circle":
                draw.ellipse(box, fill=COLOURS[colour])
            elif shape == "triangle":
                draw.polygon([(x, y + 16), (x + 8, y), (x + 16, y + 16)], fill=COLOURS[colour])
            else:
                draw.rectangle(box, fill=COLOURS[colour])
        question = QUESTIONS[index % len(QUESTIONS)].format(colour=colour, shape=shape)
        requests.append(GenerationRequest([Turn("user", "<image>\n" + question)], [image]))
    return requests


# ---------------------------------------------------------------------------- timing
def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_times(paths: dict[str, Callable[[], object]], repeats: int, device: str) -> tuple[dict[str, float], dict[str, object]]:
    """Each path's shortest wall time over `repeats` rounds, and its last output.

    Every path runs once to warm up; then the rounds take the paths in turn, so that a slow spell of a
    shared machine falls on all of them rather than on whichever ran during it.
    """
    outputs = {name: run() for name, run in paths.items()}
    best = {name: float("inf") for name in paths}
    for _ in range(repeats):
        for name, run in paths.items():
            synchronise(device)
            start = time.perf_counter()
            outputs[name] = run()
            synchronise(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, outputs


def hf_generate_one_by_one(engine: GenerationEngine, requests: list[GenerationRequest], max_new_tokens: int) -> list[list[int]]:
    """The baseline: HF `generate`, batch 1, greedy, on the engine's own prompt ids and pixels."""
    answers = []
    eos = sorted(engine.stop_rule.eos_ids)
    for request in requests:
        prepared = engine.prepare(request)
        ids = torch.tensor([prepared.input_ids], device=engine.device)
        with torch.no_grad():
            output = engine.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=prepared.pixel_values.to(engine.device),
                max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=eos,
                pad_token_id=engine.pad_token_id,
            )
        answers.append(output[0, ids.shape[1]:].tolist())
    return answers


def hf_generate_batched(engine: GenerationEngine, requests: list[GenerationRequest], max_new_tokens: int,
                        batch_size: int) -> list[list[int]]:
    """The fair baseline: HF `generate` over batches of `batch_size` requests in order, the engine's own
    prompt ids left padded (attention mask 0 on the padding), greedy; each row cut after its first eos."""
    answers = []
    eos = sorted(engine.stop_rule.eos_ids)
    for start in range(0, len(requests), batch_size):
        prepared = [engine.prepare(request) for request in requests[start : start + batch_size]]
        longest = max(prompt.length for prompt in prepared)
        ids = torch.full((len(prepared), longest), engine.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prepared):
            ids[row, longest - prompt.length :] = torch.tensor(prompt.input_ids)
            mask[row, longest - prompt.length :] = 1
        pixels = torch.cat([prompt.pixel_values for prompt in prepared])
        with torch.no_grad():
            output = engine.model.generate(
                input_ids=ids.to(engine.device), attention_mask=mask.to(engine.device),
                pixel_values=pixels.to(engine.device, engine.model.dtype), max_new_tokens=max_new_tokens,
                do_sample=False, num_beams=1, eos_token_id=eos, pad_token_id=engine.pad_token_id,
            )
        for row in output[:, longest:].tolist():
            cut = next((index + 1 for index, token in enumerate(row) if token in eos), len(row))
            answers.append(row[:cut])
    return answers


def generated_tokens(token_lists: list[list[int]]) -> int:
    return sum(len(tokens) for tokens in token_lists)


# ---------------------------------------------------------------------------- the benchmark
def run(settings: Settings) -> dict:
    torch.set_num_threads(settings.threads)
    load_before = os.getloadavg()[0]  # a shared machine's other work shows in every figure
    with tempfile.TemporaryDirectory() as folder:
        engine = build_engine(Path(folder), settings)
    requests = make_requests(settings.prompts, settings.seed)
    prompt_lengths = [engine.prepare(request).length for request in requests]
    greedy = DecodingConfig(max_new_tokens=settings.max_new_tokens)

    few = requests[: settings.opera_prompts]
    beam = DecodingConfig.parse(f"beam:num_beams={settings.num_beams}", max_new_tokens=settings.opera_max_new_tokens)
    opera = DecodingConfig.parse(f"opera:num_beams={settings.num_beams}", max_new_tokens=settings.opera_max_new_tokens)
    vcd = DecodingConfig.parse("vcd", max_new_tokens=settings.max_new_tokens)
    seconds, outputs = best_times({
        # 1. batched greedy vs a batch-1 HF generate loop
        "engine_greedy": lambda: engine.generate(requests, greedy),
        "hf_greedy": lambda: hf_generate_one_by_one(engine, requests, settings.max_new_tokens),
        "hf_greedy_batched": lambda: hf_generate_batched(engine, requests, settings.max_new_tokens, settings.batch_size),
        # 2. OPERA vs beam search on the first few prompts
        "beam_batched": lambda: engine.generate(few, beam),
        "beam_alone": lambda: [engine.generate([request], beam)[0] for request in few],
        "opera": lambda: engine.generate(few, opera),
        # 3. VCD vs greedy, both batched
        "vcd": lambda: engine.generate(requests, vcd),
    }, settings.repeats, settings.device)
    engine_answers = [result.token_ids for result in outputs["engine_greedy"]]
    hf_answers = outputs["hf_greedy"]
    # HF stops after eos and pads nothing at batch 1; the engine's token_ids include the eos too.
    same = sum(ours == theirs for ours, theirs in zip(engine_answers, hf_answers))
    hf_batched_answers = outputs["hf_greedy_batched"]
    same_batched = sum(ours == theirs for ours, theirs in zip(engine_answers, hf_batched_answers))
    engine_s, hf_s, hf_batched_s = seconds["engine_greedy"], seconds["hf_greedy"], seconds["hf_greedy_batched"]
    engine_tps = generated_tokens(engine_answers) / engine_s
    hf_tps = generated_tokens(hf_answers) / hf_s
    hf_batched_tps = generated_tokens(hf_batched_answers) / hf_batched_s
    beam_batched_s, beam_alone_s, opera_s, vcd_s = (seconds[name] for name in ("beam_batched", "beam_alone", "opera", "vcd"))
    vcd_results = outputs["vcd"]

    parameters = sum(parameter.numel() for parameter in engine.model.parameters())
    figures = {
        "engine_batched_greedy": {"seconds": engine_s, "tokens": generated_tokens(engine_answers), "tokens_per_s": engine_tps},
        "hf_generate_batch1_greedy": {"seconds": hf_s, "tokens": generated_tokens(hf_answers), "tokens_per_s": hf_tps},
        "hf_generate_batched_greedy": {"seconds": hf_batched_s, "tokens": generated_tokens(hf_batched_answers),
                                       "tokens_per_s": hf_batched_tps, "batch_size": settings.batch_size,
                                       "padding": "left"},
        "throughput_ratio_engine_over_hf_batched": engine_tps / hf_batched_tps,
        "greedy_answers_identical_to_hf_batched": f"{same_batched}/{len(requests)}",
        "throughput_ratio_engine_over_hf": engine_tps / hf_tps,
        "greedy_answers_identical_to_hf": f"{same}/{len(requests)}",
        "beam_batched_seconds": beam_batched_s,
        "beam_one_request_at_a_time_seconds": beam_alone_s,
        "opera_seconds": opera_s,
        "opera_time_ratio_over_batched_beam": opera_s / beam_batched_s,
        "opera_time_ratio_over_beam_one_at_a_time": opera_s / beam_alone_s,
        "vcd_seconds": vcd_s,
        "greedy_seconds": engine_s,
        "vcd_time_ratio_over_greedy": vcd_s / engine_s,
        "vcd_tokens": generated_tokens([result.token_ids for result in vcd_results]),
    }
    return {
        "benchmark": "generation_throughput",
        "device": describe_device(settings.device),
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0], "cpu_count": os.cpu_count()},
        "settings": asdict(settings),
        "model": {
            "vision": "CLIP 64 px, patch 8, hidden 128, 4 layers (random weights)",
            "llm": "Llama hidden 256, 4 layers, vocab 1024 (random weights)",
            "parameters": parameters,
            "image_tokens": int(engine.model.config.image_seq_length),
            "prompt_tokens_min_mean_max": [min(prompt_lengths), sum(prompt_lengths) / len(prompt_lengths), max(prompt_lengths)],
            "dtype": str(engine.model.dtype),
        },
        "figures": figures,
    }


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name}"


def versions() -> dict:
    import transformers

    import crystalvlm

    # crystalvlm's own version string: the package may run from src/ without being installed.
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "crystalvlm": crystalvlm.__version__, "numpy": np.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="engine batch size")
    parser.add_argument("--opera-prompts", type=int, default=4)
    parser.add_argument("--opera-max-new-tokens", type=int, default=16)
    parser.add_argument("--num-beams", type=int, default=5, help="beams of beam search and OPERA")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    settings = Settings(args.prompts, args.max_new_tokens, args.batch_size, args.opera_prompts, args.opera_max_new_tokens,
                        args.num_beams, args.repeats, args.device, args.threads, args.seed)
    report = run(settings)
    figures = report["figures"]
    print(f"device: {report['device']}, threads {report['threads']}, torch {report['versions']['torch']}, "
          f"transformers {report['versions']['transformers']}")
    print(f"greedy, {settings.prompts} prompts x {settings.max_new_tokens} new tokens, batch {settings.batch_size}: "
          f"HF generate batched (left padding) {figures['hf_generate_batched_greedy']['tokens_per_s']:.1f} tok/s -> "
          f"ratio {figures['throughput_ratio_engine_over_hf_batched']:.2f}x "
          f"(identical answers: {figures['greedy_answers_identical_to_hf_batched']})")
    print(f"greedy, {settings.prompts} prompts x {settings.max_new_tokens} new tokens: engine batched "
          f"{figures['engine_batched_greedy']['tokens_per_s']:.1f} tok/s, HF generate batch 1 "
          f"{figures['hf_generate_batch1_greedy']['tokens_per_s']:.1f} tok/s -> ratio "
          f"{figures['throughput_ratio_engine_over_hf']:.2f}x (identical answers: {figures['greedy_answers_identical_to_hf']})")
    print(f"OPERA / beam search ({settings.num_beams} beams, {settings.opera_prompts} prompts x "
          f"{settings.opera_max_new_tokens} tokens): {figures['opera_time_ratio_over_batched_beam']:.2f}x batched beam, "
          f"{figures['opera_time_ratio_over_beam_one_at_a_time']:.2f}x beam one request at a time")
    print(f"VCD / greedy (batched): {figures['vcd_time_ratio_over_greedy']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")  # a killed run leaves the previous file whole
    partial.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(partial, args.out)
    print(f"written: {args.out}")
    print(json.dumps({"ratio_over_hf_generate_batched": round(figures["throughput_ratio_engine_over_hf_batched"], 2),
                      "ratio_over_hf_generate_batch1": round(figures["throughput_ratio_engine_over_hf"], 2),
                      "identical_to_hf_batched": figures["greedy_answers_identical_to_hf_batched"]}))


if __name__ == "__main__":
    main()
