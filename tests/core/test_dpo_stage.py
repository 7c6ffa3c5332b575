"""A `kind: dpo` stage: its loss equals TRL's DPO loss on the same batch, it learns the preference,
and a run killed with SIGKILL and resumed ends with the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tiny_fixtures import COLOURS, tiny_model_section
from crystalvlm.data.preference_records import load_pairs, pair_line
from crystalvlm.train.preference import dpo_loss, sequence_logps

CLI = [sys.executable, "-m", "crystalvlm.cli"]


def _pairs_file(world: dict[str, Path], path: Path) -> Path:
    """One pair per colour-world image: its true description preferred over one that names a circle."""
    names = list(COLOURS)
    lines = []
    for index, image in enumerate(sorted(p.name for p in world["images"].iterdir())):
        colour = names[index % len(names)]
        lines.append(pair_line(f"p{index}", image, "What colour is the square?", f"A {colour} square.",
                               f"A {colour} circle."))
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _dpo_recipe(tmp: Path, tokenizer_dir: Path, world: dict[str, Path], **stage) -> Path:
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    settings = {"kind": "dpo", "beta": 0.5, "template": "vicuna_v1", "data": ["pairs"], "tunable": ["projector", "llm"],
                "lr": {"projector": 2e-3, "llm": 2e-3}, "batch_size": 4, "warmup_ratio": 0.0, "max_length": 256,
                **stage}
    recipe = {"name": "test-dpo", "seed": 3, "model": tiny_model_section(tokenizer_dir, vocab + 8), "image_mode": "pad",
              "datasets": {"pairs": {"file": str(_pairs_file(world, tmp / "pairs.jsonl")),
                                     "image_folder": str(world["images"])}},
              "stages": {"prefer": settings}}
    path = tmp / "dpo.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _trl_and_ours(loss_types: list[str], loss_weights: list[float]) -> tuple[float, dict]:
    """TRL's DPOTrainer._compute_loss with `loss_types`/`loss_weights` on a tiny causal LM and one
    [chosen; rejected] batch, and our sequence log-probs of the same batch (policy, reference, labels)."""
    trl = pytest.importorskip("trl")
    from collections import defaultdict
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.dpo_trainer import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head  # TRL's own per-token log-prob head

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
    policy, reference = LlamaForCausalLM(config).eval(), LlamaForCausalLM(config).eval()
    ids = torch.randint(3, 50, (4, 12))  # rows: chosen_0, chosen_1, rejected_0, rejected_1
    completion = torch.zeros_like(ids)
    for row, start in enumerate((5, 7, 6, 4)):
        completion[row, start:] = 1
    attention = torch.ones_like(ids)
    attention[1, -2:] = 0  # padding at the end of one row
    completion[1, -2:] = 0

    fields = ("log_probs", "entropy", "mean_logits", "is_top1")
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda value: value,
                                  gather=lambda value: value)
    fake = SimpleNamespace(model=policy, ref_model=reference, accelerator=accelerator, args=SimpleNamespace(gradient_checkpointing_kwargs=None),
                           aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=False, beta=BETA,
                           f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0, loss_types=loss_types,
                           loss_weights=loss_weights, label_smoothing=0.0, use_weighting=False, rpo_alpha=None,
                           _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0,
                           _tp_size=1)
    try:
        add_fused_lm_head(policy, outputs=fields)
        add_fused_lm_head(reference, outputs=fields)
        with torch.no_grad():
            loss = DPOTrainer._compute_loss(fake, policy, {"input_ids": ids, "attention_mask": attention,
                                                           "completion_mask": completion}, return_outputs=False)
    except (AttributeError, TypeError, KeyError) as error:  # TRL's internals moved
        pytest.skip(f"TRL's _compute_loss cannot be called on a bare batch in trl {trl.__version__}: {error!r}")

    with torch.no_grad():
        labels = ids.masked_fill(completion == 0, -100)
        ours = {"policy": sequence_logps(policy(input_ids=ids, attention_mask=attention).logits, labels),
                "reference": sequence_logps(reference(input_ids=ids, attention_mask=attention).logits, labels),
                "labels": labels}
    return float(loss), ours


BETA = 0.3


def test_dpo_loss_equals_trl_on_the_same_batch():
    """TRL's sigmoid loss against our sequence_logps + dpo_loss on the same logits and masks."""
    trl, ours = _trl_and_ours(["sigmoid"], [1.0])
    policy, reference = ours["policy"], ours["reference"]
    losses, _, _ = dpo_loss(policy[:2], policy[2:], reference[:2], reference[2:], BETA)
    assert abs(float(losses.mean()) - trl) < 1e-5, (float(losses.mean()), trl)


def test_dpo_with_sft_term_equals_trl_rpo_on_the_same_batch(monkeypatch):
    """rpo_alpha: TRL's [sigmoid, sft] loss with weights [1, alpha] (its rpo_alpha) equals our DPO loss
    plus alpha x chosen_token_nll, and DpoObjective's per-pair sum divided by the pairs gives it too."""
    from crystalvlm.train.preference import DpoObjective, chosen_token_nll

    alpha = 0.7
    trl, ours = _trl_and_ours(["sigmoid", "sft"], [1.0, alpha])
    policy, reference, labels = ours["policy"], ours["reference"], ours["labels"]
    losses, _, _ = dpo_loss(policy[:2], policy[2:], reference[:2], reference[2:], BETA)
    nll = chosen_token_nll(policy[:2], labels[:2])
    assert abs(float(losses.mean() + alpha * nll) - trl) < 1e-5, (float(losses.mean() + alpha * nll), trl)
    assert float(nll) > 0.1  # the term is there: without it the sums differ by alpha * nll

    objective = DpoObjective(BETA, torch.stack([reference[:2], reference[2:]], 1).double(), rpo_alpha=alpha)
    # The objective's forward replaced by the log-probs above (the same model and batch).
    monkeypatch.setattr("crystalvlm.train.preference.pair_logps", lambda model, batch: (policy[:2], policy[2:]))
    total, stats = objective.loss_sum(None, {"pair_index": torch.tensor([0, 1]), "labels": labels})
    assert abs(float(total) / 2 - trl) < 1e-5 and abs(float(stats["chosen_nll"]) / 2 - float(nll)) < 1e-6


def test_dpo_loss_against_a_per_token_computation():
    """sequence_logps on a padded batch equals summing log-softmax token by token, and the loss is
    log 2 when policy and reference agree (the first step of every dpo stage)."""
    torch.manual_seed(1)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, -100, 4, 5, 6, -100], [-100, 3, 2, -100, -100, -100]])
    expected = []
    for row in range(2):
        total = 0.0
        for t in range(1, 6):
            if labels[row, t] >= 0:
                total += torch.log_softmax(logits[row, t - 1], -1)[labels[row, t]].item()
        expected.append(total)
    assert torch.allclose(sequence_logps(logits, labels), torch.tensor(expected), atol=1e-5)
    same = torch.tensor([-3.0, -7.0])
    losses, chosen, rejected = dpo_loss(same, same - 1, same, same - 1, beta=0.1)
    assert torch.allclose(losses, torch.full((2,), float(torch.log(torch.tensor(2.0)))))
    losses, _, _ = dpo_loss(same + 2, same - 1, same, same - 1, beta=0.1)  # chosen more likely than at the start
    assert (losses < 0.6931).all()


def test_pairs_layout_is_read_back_and_bad_lines_are_named(tmp_path, colour_world):
    path = _pairs_file(colour_world, tmp_path / "pairs.jsonl")
    with open(path, "a") as handle:
        handle.write("{not json\n")
        handle.write(json.dumps({"images": ["a.png"], "prompt": "Describe.", "chosen": "x"}) + "\n")
    loaded = load_pairs(path)
    assert len(loaded.pairs) == len(list(colour_world["images"].iterdir()))
    first = loaded.pairs[0]
    assert first.chosen.images == ("img000.png",) and first.chosen.turns[0].text.startswith("<image>\n")
    assert first.chosen.turns[-1].text == "A red square." and first.rejected.turns[-1].text == "A red circle."
    reasons = [problem.reason for problem in loaded.problems]
    assert len(reasons) == 2 and "invalid JSON" in reasons[0] and "'rejected'" in reasons[1]
    assert all(":" in problem.source and str(path) in problem.source for problem in loaded.problems)


def _train(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(CLI + ["train", str(recipe), "--out", str(out), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_dpo_stage_learns_and_resumes_exactly_after_a_kill(colour_world, tiny_tokenizer_dir, tmp_path):
    from crystalvlm.train.recipe import load_recipe
    from crystalvlm.train.trainer import TrainOptions, train_recipe

    recipe_path = _dpo_recipe(tmp_path, tiny_tokenizer_dir, colour_world, max_steps=10, save_every=1)
    torch.set_num_threads(1)
    train_recipe(load_recipe(str(recipe_path)), TrainOptions(run_dir=tmp_path / "reference", progress=False))
    rows = [json.loads(line) for line in (tmp_path / "reference/prefer/metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["loss"] - 0.693147) < 1e-3, "policy = reference at the first step: loss log 2"
    assert rows[-1]["loss"] < 0.5 and rows[-1]["reward_accuracy"] >= 0.75, rows[-1]
    assert rows[0]["pairs"] == 4

    interrupted = tmp_path / "interrupted"
    process = _train(recipe_path, interrupted, "--resume")
    deadline = time.time() + 120
    metrics = interrupted / "prefer/metrics.jsonl"
    while process.poll() is None and time.time() < deadline:  # kill once a few steps are saved
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed: " + process.communicate()[0].decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "prefer/final").exists()
    train_recipe(load_recipe(str(recipe_path)), TrainOptions(run_dir=interrupted, progress=False, resume=True))

    finished = load_file(str(interrupted / "prefer/final/model.safetensors"))
    expected = load_file(str(tmp_path / "reference/prefer/final/model.safetensors"))
    assert finished.keys() == expected.keys()
    for name in expected:
        assert torch.equal(finished[name], expected[name]), f"{name} differs after kill and resume"
    assert len(metrics.read_text().splitlines()) == len(rows)
    provenance = json.loads((interrupted / "provenance.json").read_text())
    assert str(tmp_path / "pairs.jsonl") in provenance["data_files"]


def test_rpo_alpha_is_checked_where_the_stage_is_declared():
    """rpo_alpha belongs to dpo stages and is a number >= 0; a recipe saying otherwise is refused."""
    from crystalvlm.train.recipe import StageConfig

    common = {"template": "vicuna_v1", "data": ["pairs"], "tunable": ["llm"], "lr": {"llm": 1e-4}}
    assert StageConfig("prefer", kind="dpo", rpo_alpha=2, **common).rpo_alpha == 2.0
    assert StageConfig("prefer", kind="dpo", **common).rpo_alpha is None
    for bad, words in (({"kind": "sft", "rpo_alpha": 1.0}, "dpo stages only"),
                       ({"kind": "dpo", "rpo_alpha": -1.0}, ">= 0"), ({"kind": "dpo", "rpo_alpha": "a lot"}, ">= 0")):
        with pytest.raises(ValueError, match=words):
            StageConfig("prefer", **bad, **common)
