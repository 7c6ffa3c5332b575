"""Inference on a GPU at the reference shape: an MME-sized evaluation, and batch-1 decode against the bandwidth bound.

    PYTHONPATH=src python benchmarks/gpu_inference.py eval   --device cuda   # -> results/gpu_eval_mme.json
    PYTHONPATH=src python benchmarks/gpu_inference.py decode --device cuda   # -> results/gpu_decode_bandwidth.json
    PYTHONPATH=src python benchmarks/gpu_inference.py eval --device cpu --shape tiny --out-dir /tmp/r  # smoke run

The model: CLIP ViT-L/14-336 (576 image tokens) + Llama-2-7B's decoder (32 layers, 4096 wide, MLP 11008),
random weights, built directly on the device in bf16 (nothing downloaded; a random init of 7B on the
CPU would take minutes). The vocabulary is a byte-level BPE trained here on the benchmark's own text
(about a thousand tokens instead of 32000), so the LLM has ~6.5B parameters; every figure below is
computed from the parameters actually present. `--shape tiny` is the quickstart's scale, for a CPU.

eval: 2,374 yes/no questions, two per image over 1,187 images, as MME has; random-noise images of the
vision tower's size. Ours: `GenerationEngine.generate` (what the eval runner calls) with batch size
`--batch-size`: an image's two questions in one batch, the image encoded once, prompt prefixes shared.
Baseline: HF `generate` over batches of the same size in question order, prompts left padded, greedy,
the processor run on each batch as lmms-eval's and LLaVA's batched loaders do. The baseline answers
the first `--baseline-questions` questions only (its questions/s does not depend on how many it answers;
the time of the full set is extrapolated and marked so). Greedy answers are compared on the questions
both answered: in bf16 a different batch layout changes the order of floating-point sums, so a
random-weight model's near-tied logits can flip; the agreement is reported, not assumed.

decode: one request (an image and a question), greedy, at batch 1; decode tokens/s is measured as the
difference of two runs (16 and 16 + `--decode-tokens` new tokens), so prefill is excluded. End of
sequence is ignored so every run makes its full count. The bound: the bytes a decode step must read
(every LLM weight but the input embedding table, which is read one row per token; the KV cache is
added too) over the memory bandwidth measured in the same process (a device-to-device copy: bytes
read + bytes written over time), and over the data sheet's nominal bandwidth. HF `generate` at
batch 1 is measured the same way beside it.
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

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_names import describe_device  # noqa: E402  (shared with train_throughput.py)

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 1024 ** 3

# Nominal HBM bandwidth (NVIDIA data sheets), most specific name first.
NOMINAL_BANDWIDTH_TBPS = (("H100 PCIe", 2.0), ("H100 NVL", 3.9), ("H100", 3.35), ("H200", 4.8), ("A100-SXM4-80GB", 2.039),
                          ("A100-SXM4-40GB", 1.555), ("A100 80GB PCIe", 1.935), ("L40S", 0.864))

CLIP_L_336 = {
    "model_type": "clip_vision_model", "image_size": 336, "patch_size": 14, "hidden_size": 1024,
    "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16, "projection_dim": 768,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
LLAMA2_7B_BLOCKS = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
OBJECTS = ("square", "circle", "triangle", "person", "car", "dog", "cup", "chair", "tree", "clock")


# ---------------------------------------------------------------------------- model
def corpus() -> list[str]:
    lines = [f"Is there a {colour} {thing} in the image? Please answer yes or no." for colour in COLOURS for thing in OBJECTS]
    lines += [f"a {colour} {thing}" for colour in COLOURS for thing in OBJECTS] + ["Yes", "No", "yes", "no"]
    return lines * 8


def build_engine(shape: str, device: torch.device, dtype: torch.dtype, batch_size: int, folder: Path):
    """A Llava of the shape on `device` in `dtype`, random weights, and the engine over it."""
    from transformers import AutoTokenizer

    from crystalvlm.data.templates import get_template
    from crystalvlm.infer.engine import GenerationEngine
    from crystalvlm.markers import IMAGE_TOKEN
    from crystalvlm.models.build import ModelSpec, PartSpec, build_llava
    from crystalvlm.worlds.parts.tiny import tiny_llm_config, tiny_vision_config, train_tiny_tokenizer

    train_tiny_tokenizer(corpus(), folder, vocab_size=2048, templates=["vicuna_v1"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # The LLM's vocabulary is the tokenizer's (with the image token build_llava adds if it is missing), so
    # build_llava does not resize the embeddings it just created.
    vocab = len(tokenizer) + (IMAGE_TOKEN not in tokenizer.get_vocab())
    if shape == "7b":
        vision, llm = CLIP_L_336, {**LLAMA2_7B_BLOCKS, "vocab_size": vocab}
    else:
        vision, llm = tiny_vision_config(image_size=64, patch_size=8, hidden=128, layers=4), tiny_llm_config(vocab, 256, 4)
    spec = ModelSpec(vision=PartSpec(config=vision), llm=PartSpec(config=llm), tokenizer=str(folder))
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in `dtype`, on `device`: no fp32 copy first
    try:
        with torch.device(device):
            model, processor = build_llava(spec, chat_template=get_template("vicuna_v1").chat_template_jinja())
    finally:
        torch.set_default_dtype(previous)
    model = model.to(device)  # already there; a cast to `dtype` would also round buffers kept in float32
    if model.dtype != dtype:
        model = model.to(dtype)
    model.eval()
    return GenerationEngine(model, processor, "vicuna_v1", "pad", batch_size=batch_size)


def parameter_counts(model) -> dict:
    language_model = model.model.language_model
    embedding = language_model.get_input_embeddings().weight.numel()
    llm = sum(p.numel() for p in language_model.parameters()) + model.lm_head.weight.numel()
    return {"total": sum(p.numel() for p in model.parameters()), "llm_with_lm_head": llm,
            "llm_input_embedding": embedding, "vision": sum(p.numel() for p in model.model.vision_tower.parameters())}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------- eval
def mme_sized_requests(images: int, side: int, seed: int):
    """Two yes/no questions per random-noise image (MME's layout: 1,187 images, 2,374 questions)."""
    from PIL import Image

    from crystalvlm.data.templates import Turn
    from crystalvlm.infer.engine import GenerationRequest

    rng = np.random.default_rng(seed)
    requests, questions = [], []
    for index in range(images):
        image = Image.fromarray(rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8))
        for answer in range(2):
            colour, thing = COLOURS[(index + answer) % len(COLOURS)], OBJECTS[(index * 3 + answer) % len(OBJECTS)]
            question = f"Is there a {colour} {thing} in the image? Please answer yes or no."
            requests.append(GenerationRequest([Turn("user", "<image>\n" + question)], [image]))
            questions.append(question)
    return requests, questions


def hf_batched_answers(engine, requests, questions, batch_size: int, max_new_tokens: int) -> list[str]:
    """HF `generate` over batches of `batch_size` in order, left padded, greedy; texts stripped."""
    processor, model = engine.processor, engine.model
    answers = []
    with torch.inference_mode():
        for start in range(0, len(requests), batch_size):
            chunk = range(start, min(start + batch_size, len(requests)))
            texts = [processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": questions[i]}]}],
                add_generation_prompt=True, tokenize=False) for i in chunk]
            inputs = processor(text=texts, images=[requests[i].images[0] for i in chunk], return_tensors="pt",
                               padding=True, padding_side="left").to(engine.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            output = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                    pad_token_id=engine.pad_token_id)
            answers += [text.strip() for text in processor.tokenizer.batch_decode(
                output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    return answers


def measure_eval(engine, args, device: torch.device) -> dict:
    from crystalvlm.infer.decoding.config import DecodingConfig

    side = int(engine.model.config.vision_config.image_size)
    requests, questions = mme_sized_requests(args.questions // 2, side, args.seed)
    greedy = DecodingConfig(max_new_tokens=args.max_new_tokens)
    baseline_count = min(len(requests), max(2, args.baseline_questions // 2 * 2))

    # Warm-up of both paths on a few questions (kernel selection, allocator), not timed.
    warm = min(len(requests), 2 * args.batch_size)
    engine.generate(requests[:warm], greedy)
    hf_batched_answers(engine, requests[:warm], questions[:warm], args.batch_size, args.max_new_tokens)

    synchronise(device)
    start = time.perf_counter()
    ours = [result.text.strip() for result in engine.generate(requests, greedy)]
    synchronise(device)
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    theirs = hf_batched_answers(engine, requests[:baseline_count], questions[:baseline_count], args.batch_size,
                                args.max_new_tokens)
    synchronise(device)
    theirs_s = time.perf_counter() - start

    ours_rate, theirs_rate = len(requests) / ours_s, baseline_count / theirs_s
    same = sum(a == b for a, b in zip(ours, theirs))
    return {
        "questions": len(requests), "images": len(requests) // 2, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "ours": {"questions": len(requests), "seconds": round(ours_s, 3), "questions_per_s": round(ours_rate, 2)},
        "batched_hf_generate": {"questions": baseline_count, "seconds": round(theirs_s, 3),
                                "questions_per_s": round(theirs_rate, 2),
                                "seconds_for_all_questions_extrapolated": round(len(requests) / theirs_rate, 1)},
        "ratio_over_batched_hf_generate": round(ours_rate / theirs_rate, 2),
        "answers_equal_to_batched_hf_generate": f"{same}/{baseline_count}",
        "distinct_answers": len(set(ours)),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 1) if device.type == "cuda" else None,
    }


# ---------------------------------------------------------------------------- decode
def copy_bandwidth(device: torch.device, megabytes: int, repeats: int = 10) -> float:
    """Bytes/s of a device-to-device copy: each copy reads and writes the buffer once."""
    source = torch.empty(megabytes * 2 ** 20, dtype=torch.uint8, device=device)
    source.fill_(1)
    target = torch.empty_like(source)
    target.copy_(source)
    synchronise(device)
    start = time.perf_counter()
    for _ in range(repeats):
        target.copy_(source)
    synchronise(device)
    seconds = time.perf_counter() - start
    del source, target
    return 2 * megabytes * 2 ** 20 * repeats / seconds


def nominal_bandwidth(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "no nominal figure for a CPU"
    name = torch.cuda.get_device_name(device)
    for key, tbps in NOMINAL_BANDWIDTH_TBPS:
        if key in name:
            return tbps * 1e12, f"{key} data sheet: {tbps} TB/s"
    return None, f"no data-sheet figure known for {name}"


def timed(run, device: torch.device) -> float:
    synchronise(device)
    start = time.perf_counter()
    run()
    synchronise(device)
    return time.perf_counter() - start


def measure_decode(engine, args, device: torch.device) -> dict:
    from crystalvlm.infer.decoding.config import DecodingConfig
    from crystalvlm.infer.text_stream import StopRule

    engine.stop_rule = StopRule(frozenset(), ())  # no end of sequence: every run makes its full count
    side = int(engine.model.config.vision_config.image_size)
    request = mme_sized_requests(1, side, args.seed)[0][0]
    short, long = 16, 16 + args.decode_tokens
    prepared = engine.prepare(request)
    ids = torch.tensor([prepared.input_ids], device=device)
    pixels = prepared.pixel_values.to(device, engine.model.dtype)

    def ours(count: int):
        return lambda: engine.generate([request], DecodingConfig(max_new_tokens=count))

    def hf(count: int):
        def run():
            with torch.inference_mode():
                engine.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                                      do_sample=False, num_beams=1, max_new_tokens=count, min_new_tokens=count,
                                      pad_token_id=engine.pad_token_id)
        return run

    for run in (ours(short), hf(short)):  # warm-up
        run()
    times = {name: {count: min(timed(make(count), device) for _ in range(args.repeats)) for count in (short, long)}
             for name, make in (("ours", ours), ("hf_generate", hf))}
    rates = {name: args.decode_tokens / (spent[long] - spent[short]) for name, spent in times.items()}

    counts = parameter_counts(engine.model)
    bytes_per_parameter = torch.finfo(engine.model.dtype).bits // 8
    weight_bytes = (counts["llm_with_lm_head"] - counts["llm_input_embedding"]) * bytes_per_parameter
    text = engine.model.config.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    # K and V of every layer, at the middle of the long run (prompt + half the new tokens).
    kv_bytes = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * bytes_per_parameter * (
        prepared.length + long // 2)
    measured = copy_bandwidth(device, args.copy_megabytes)
    nominal, nominal_source = nominal_bandwidth(device)
    step_bytes = weight_bytes + kv_bytes

    def against(bandwidth: float | None) -> dict | None:
        if bandwidth is None:
            return None
        bound = bandwidth / step_bytes
        return {"bandwidth_gb_per_s": round(bandwidth / 1e9, 1), "bound_tokens_per_s": round(bound, 1),
                "ours_fraction_of_bound": round(rates["ours"] / bound, 3),
                "hf_generate_fraction_of_bound": round(rates["hf_generate"] / bound, 3)}

    return {
        "prompt_tokens": prepared.length, "decode_tokens": args.decode_tokens, "repeats": args.repeats,
        "seconds": {name: {str(count): round(value, 4) for count, value in spent.items()} for name, spent in times.items()},
        "ours_decode_tokens_per_s": round(rates["ours"], 1),
        "hf_generate_decode_tokens_per_s": round(rates["hf_generate"], 1),
        "ratio_over_hf_generate": round(rates["ours"] / rates["hf_generate"], 2),
        "bytes_read_per_step": {"weights": weight_bytes, "kv_cache_mid_run": kv_bytes},
        "against_measured_copy_bandwidth": against(measured),
        "against_nominal_bandwidth": against(nominal),
        "nominal_bandwidth_source": nominal_source,
        "copy_megabytes": args.copy_megabytes,
    }


# ---------------------------------------------------------------------------- main
def write_atomically(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measure", choices=("eval", "decode"), help="which measurement to run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=("7b", "tiny"), default=None,
                        help="model shape (default: 7b on a GPU, tiny on a CPU)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="default: bfloat16 on a GPU, float32 on a CPU")
    parser.add_argument("--questions", type=int, default=2374, help="eval: yes/no questions, two per image (MME: 2,374)")
    parser.add_argument("--baseline-questions", type=int, default=512,
                        help="eval: questions the batched HF baseline answers (its rate does not depend on the count)")
    parser.add_argument("--batch-size", type=int, default=32, help="eval: batch size of both paths")
    parser.add_argument("--max-new-tokens", type=int, default=2, help="eval: answer budget (yes/no and its end)")
    parser.add_argument("--decode-tokens", type=int, default=128, help="decode: new tokens measured (after the first 16)")
    parser.add_argument("--repeats", type=int, default=2, help="decode: runs per length, the fastest kept")
    parser.add_argument("--copy-megabytes", type=int, default=4096, help="decode: buffer of the bandwidth copy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where gpu_eval_mme.json / gpu_decode_bandwidth.json go")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shape = args.shape or ("7b" if device.type == "cuda" else "tiny")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_inference_") as folder:
        engine = build_engine(shape, device, dtype, args.batch_size, Path(folder))
    build_s = time.perf_counter() - started
    figures = measure_eval(engine, args, device) if args.measure == "eval" else measure_decode(engine, args, device)
    report = {
        "benchmark": f"gpu_inference {args.measure}",
        "device": describe_device(device),
        "shape": shape,
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": parameter_counts(engine.model),
        "image_tokens": int(engine.model.config.image_seq_length),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "cuda": torch.version.cuda},
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2),
                              "cpu_count": os.cpu_count()},
        "model_build_seconds": round(build_s, 1),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": figures,
    }
    name = "gpu_eval_mme.json" if args.measure == "eval" else "gpu_decode_bandwidth.json"
    write_atomically(args.out_dir / name, report)
    print(json.dumps({"written": str(args.out_dir / name), "device": report["device"], "shape": shape, **{
        key: value for key, value in figures.items() if not isinstance(value, dict)}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
