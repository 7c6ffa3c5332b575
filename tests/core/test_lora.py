"""LoRA stages through PEFT: the merged final is a plain checkpoint, kept adapters merge later,
QLoRA is refused on a CPU, bad targets fail before training, resume is exact with adapters."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_fixtures import tiny_recipe

CLI = [sys.executable, "-m", "crystalvlm.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
LORA_R = 8


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env=ENV, timeout=timeout)


def _train(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli("train", str(recipe), "--out", str(out), "--quiet", *extra)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def recipe(colour_world, tiny_tokenizer_dir, tmp_path_factory) -> Path:
    return tiny_recipe(tmp_path_factory.mktemp("lora_recipe"), tiny_tokenizer_dir, colour_world, epochs=1)


@pytest.fixture(scope="module")
def lora_run(recipe, tmp_path_factory) -> Path:
    """align (full projector), then finetune with `--set stages.finetune.lora.r=8`."""
    run = tmp_path_factory.mktemp("lora_run") / "run"
    result = _train(recipe, run, "--set", f"stages.finetune.lora.r={LORA_R}")
    assert result.returncode == 0, result.stdout + result.stderr
    return run


def _finetune_only_run(lora_run: Path, run: Path) -> Path:
    """A run folder holding lora_run's align/final, so `--stage finetune` starts from it."""
    (run / "align").mkdir(parents=True)
    shutil.copytree(lora_run / "align/final", run / "align/final")
    return run


# ----------------------------------------------------------------------------- the merged final
def test_merged_final_changes_only_the_llm_targets_and_the_projector(lora_run):
    start, final = _weights(lora_run / "align/final"), _weights(lora_run / "finetune/final")
    assert start.keys() == final.keys(), "the merged checkpoint has plain Llava keys, no PEFT ones"
    changed = {name for name in start if not torch.equal(start[name], final[name])}
    for name in start:
        frozen = "vision_tower" in name or "embed_tokens" in name or "norm" in name or "lm_head" in name
        if frozen:
            assert name not in changed, f"{name} is frozen but changed"
    llm_linears = {n for n in start if "language_model" in n and n.endswith("proj.weight")}
    assert llm_linears and llm_linears <= changed, "the merged low-rank deltas must change every targeted Linear"
    assert {n for n in start if "multi_modal_projector" in n} <= changed


def test_only_adapters_and_projector_trained(lora_run):
    from transformers import AutoConfig

    summary = json.loads((lora_run / "finetune/freeze_summary.json").read_text())["parts"]
    assert summary["vision"]["trainable"] == 0
    assert summary["projector"]["trainable"] == summary["projector"]["parameters"]
    # Every Linear of a Llama block is a target: r * (in + out) adapter weights each.
    text = AutoConfig.from_pretrained(lora_run / "align/final").text_config
    hidden, inner = text.hidden_size, text.intermediate_size
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    head_dim = hidden // heads
    per_layer = (hidden + heads * head_dim) * 2 + (hidden + kv_heads * head_dim) * 2 + (hidden + inner) * 3
    assert summary["llm"]["trainable"] == LORA_R * per_layer * text.num_hidden_layers
    assert summary["llm"]["lr"] == 5e-4


def test_merged_final_loads_and_generates_without_peft(lora_run, colour_world):
    script = f"""
import sys, torch
from transformers import AutoModelForImageTextToText, AutoProcessor
model = AutoModelForImageTextToText.from_pretrained({str(lora_run / 'finetune/final')!r})
processor = AutoProcessor.from_pretrained({str(lora_run / 'finetune/final')!r})
inputs = processor.tokenizer("What colour", return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
assert out.shape[1] > inputs["input_ids"].shape[1]
assert "peft" not in sys.modules, "a merged checkpoint must not need PEFT"
print("plain ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0 and "plain ok" in result.stdout, result.stderr[-2000:]
    image = next(colour_world["images"].iterdir())
    answer = _cli("generate", str(lora_run / "finetune/final"), "--image", str(image),
                  "--prompt", "What colour is the square?", "--max-new-tokens", "4")
    assert answer.returncode == 0, answer.stderr[-2000:]
    check = _cli("data", "check", str(colour_world["qa"]), "--image-folder", str(colour_world["images"]),
                 "--model", str(lora_run / "finetune/final"), "--quiet")
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]


# ----------------------------------------------------------------------------- refusals before any work
def test_unknown_target_module_refused_before_training(recipe, tmp_path):
    result = _train(recipe, tmp_path / "run", "--stage", "align", "--set", "stages.align.tunable=[projector, llm]",
                    "--set", "stages.align.lr.llm=1e-3", "--set", "stages.align.lora.target_modules=[q_proj, qkv_proj]")
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "qkv_proj" in message and "q_proj" in message and "o_proj" in message, message
    assert not (tmp_path / "run/align/metrics.jsonl").exists(), "nothing may train"


def test_lora_settings_checked_against_the_schema(recipe):
    from crystalvlm.train.recipe import RecipeError, load_recipe

    stage = load_recipe(str(recipe), ["stages.finetune.lora.r=8"]).stage("finetune")
    assert (stage.lora.r, stage.lora.alpha, stage.lora.parts, stage.lora.merge) == (8, 16.0, ["llm"], True)
    with pytest.raises(RecipeError, match="unknown key 'rank'.*target_modules"):
        load_recipe(str(recipe), ["stages.finetune.lora.rank=4"])
    with pytest.raises(ValueError, match="not tunable"):
        load_recipe(str(recipe), ["stages.align.lora.r=4"])
    with pytest.raises(ValueError, match="adapters go on"):
        load_recipe(str(recipe), ["stages.finetune.lora.parts=[projector]"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="QLoRA is refused only where there is no GPU")
def test_qlora_refused_on_cpu_before_any_work(recipe, tmp_path):
    result = _train(recipe, tmp_path / "run", "--set", "stages.finetune.lora.quantize=4bit")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("crystalvlm")]
    assert len(lines) == 1 and "QLoRA" in lines[0] and "GPU" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run/align").exists(), "no stage may start"


# ----------------------------------------------------------------------------- kept adapters, merged later
def test_kept_adapter_merges_later_into_the_same_checkpoint(recipe, lora_run, tmp_path):
    run = _finetune_only_run(lora_run, tmp_path / "kept")
    result = _train(recipe, run, "--stage", "finetune", "--set", f"stages.finetune.lora.r={LORA_R}",
                    "--set", "stages.finetune.lora.merge=false")
    assert result.returncode == 0, result.stdout + result.stderr
    adapter = run / "finetune/final"
    assert (adapter / "adapters/llm/adapter_config.json").is_file()
    assert json.loads((adapter / "crystalvlm_adapter.json").read_text())["base"] == str((run / "align/final").resolve())
    assert not (adapter / "config.json").exists(), "an adapter folder is not a checkpoint"

    merged = tmp_path / "merged"
    result = _cli("merge", str(adapter), "--out", str(merged))
    assert result.returncode == 0, result.stderr
    # The same training merged in memory (lora_run) and merged later from disk: the same weights.
    expected, got = _weights(lora_run / "finetune/final"), _weights(merged)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name

    again = _cli("merge", str(adapter), "--out", str(merged))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr

    orphan = tmp_path / "orphan"
    shutil.copytree(adapter, orphan)
    manifest = json.loads((orphan / "crystalvlm_adapter.json").read_text())
    (orphan / "crystalvlm_adapter.json").write_text(json.dumps({**manifest, "base": str(tmp_path / "gone")}))
    missing = _cli("merge", str(orphan), "--out", str(tmp_path / "never"))
    assert missing.returncode == 2 and "base checkpoint" in missing.stderr and "missing" in missing.stderr
    assert not (tmp_path / "never").exists()


# ----------------------------------------------------------------------------- resume
def test_killed_and_resumed_lora_stage_matches_uninterrupted(recipe, lora_run, tmp_path):
    extra = ("--stage", "finetune", "--save-every", "1", "--set", f"stages.finetune.lora.r={LORA_R}",
             "--set", "stages.finetune.epochs=2")
    reference = _finetune_only_run(lora_run, tmp_path / "reference")
    result = _train(recipe, reference, *extra)
    assert result.returncode == 0, result.stdout + result.stderr

    interrupted = _finetune_only_run(lora_run, tmp_path / "interrupted")
    process = subprocess.Popen(CLI + ["train", str(recipe), "--out", str(interrupted), "--quiet", *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    latest = interrupted / "finetune/checkpoints/latest"
    deadline = time.time() + 120
    while process.poll() is None and time.time() < deadline:
        if latest.is_file() and latest.read_text().strip() >= "step-0000003":
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run must be killed mid-stage"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "finetune/final").exists()
    result = _train(recipe, interrupted, *extra, "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resumed stage finetune" in result.stdout
    expected, got = _weights(reference / "finetune/final"), _weights(interrupted / "finetune/final")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs after resume"


# ----------------------------------------------------------------------------- Partial LoRA
def test_plora_stage_saves_a_partial_lora_checkpoint(recipe, lora_run, tmp_path):
    from crystalvlm.models.partial_lora import load_partial_lora

    run = _finetune_only_run(lora_run, tmp_path / "plora")
    result = _train(recipe, run, "--stage", "finetune", "--set", f"stages.finetune.lora.r={LORA_R}",
                    "--set", "stages.finetune.lora.plora=true")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cannot be merged" in result.stdout
    final = run / "finetune/final"
    model, processor = load_partial_lora(final)
    assert processor is not None
    # Every command loads it with its update in place (load_checkpoint finds partial_lora.json).
    from crystalvlm.models.checkpoint import load_checkpoint

    loaded, _, info = load_checkpoint(final)
    assert info.template and sum("lora_A" in name for name, _ in loaded.named_parameters()) > 0
    # Text-only inputs see the frozen base exactly: the same logits as the stage's starting model.
    start, _, _ = load_checkpoint(run / "align/final")
    ids = processor.tokenizer("What colour is a ripe lemon?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, start(input_ids=ids).logits)
    answered = _cli("generate", str(final), "--prompt", "What colour is it?", "--max-new-tokens", "3",
                    "--device", "cpu")
    assert answered.returncode == 0, answered.stderr


def test_first_stage_kept_adapter_keeps_its_base_and_blocks_the_next_stage(recipe, tmp_path):
    run = tmp_path / "run"
    result = _train(recipe, run, "--set", "stages.align.tunable=[projector, llm]", "--set", "stages.align.lr.llm=1e-3",
                    "--set", "stages.align.lora.r=4", "--set", "stages.align.lora.merge=false",
                    "--set", "stages.align.max_steps=2")
    # A first stage starts from composed parts: they are kept as the adapters' base.
    assert (run / "align/base/config.json").is_file()
    assert (run / "align/final/crystalvlm_adapter.json").is_file()
    assert result.returncode == 2 and "crystalvlm merge" in result.stderr, result.stdout + result.stderr
    merged = tmp_path / "merged"
    assert _cli("merge", str(run / "align/final"), "--out", str(merged)).returncode == 0
    base, got = _weights(run / "align/base"), _weights(merged)
    assert all(torch.equal(base[name], got[name]) for name in base if "vision_tower" in name)
    assert not torch.equal(base["language_model.model.layers.0.self_attn.q_proj.weight"],
                           got["language_model.model.layers.0.self_attn.q_proj.weight"])


def test_vision_and_llm_adapters_merge_back_to_plain_keys(tiny_tokenizer_dir, tmp_path):
    """In process: adapters on both towers, a step that moves them, then merge_in_place leaves the
    Llava layout (the keys of the model before adapters) with changed Linear weights only."""
    from transformers import AutoTokenizer

    from crystalvlm.models.build import ModelSpec, build_llava
    from crystalvlm.models.checkpoint import CheckpointInfo
    from crystalvlm.train.adapters import add_adapters, merge_in_place
    from crystalvlm.train.recipe import LoraSettings
    from tiny_fixtures import tiny_model_section

    torch.manual_seed(0)
    vocab = len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    model, processor = build_llava(ModelSpec.from_dict(tiny_model_section(tiny_tokenizer_dir, vocab + 8)))
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    settings = LoraSettings(r=4, dropout=0.0, parts=["llm", "vision"], target_modules=["q_proj", "v_proj"])
    model, adapters = add_adapters(model, settings, tmp_path, None, processor, CheckpointInfo(), torch.device("cpu"))
    assert set(adapters.trainable) == {"llm", "vision"} and all(adapters.trainable.values())
    with torch.no_grad():
        for parameters in adapters.trainable.values():
            for parameter in parameters:
                parameter.add_(0.01)  # lora_B starts at zero: make the update non-zero
    merge_in_place(model)
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)
    assert any("vision_tower" in name for name in changed) and any("language_model" in name for name in changed)


def test_two_process_lora_stage_saves_one_merged_checkpoint(recipe, tmp_path):
    """Under DDP every rank holds the whole model, so the main process merges and saves alone."""
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29523",
         "-m", "crystalvlm.cli", "train", str(recipe), "--stage", "align", "--out", str(tmp_path / "run"), "--quiet",
         "--set", "stages.align.tunable=[vision, projector, llm]", "--set", "stages.align.lr.vision=1e-4",
         "--set", "stages.align.lr.llm=1e-3", "--set", "stages.align.lora.parts=[llm, vision]",
         "--set", "stages.align.lora.r=4", "--set", "stages.align.max_steps=2"],
        capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "run/align/freeze_summary.json").read_text())["parts"]
    assert 0 < summary["vision"]["trainable"] < summary["vision"]["parameters"]
    assert 0 < summary["llm"]["trainable"] < summary["llm"]["parameters"]
    weights = _weights(tmp_path / "run/align/final")
    assert not any("lora" in name or "base_layer" in name for name in weights)
