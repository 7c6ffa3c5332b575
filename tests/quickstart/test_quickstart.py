"""The quickstart end to end at smoke scale: report, HF-native checkpoints, generate and chat."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crystalvlm.cli import main as cli_main

POPE_METRICS = {"accuracy", "precision", "recall", "f1", "yes_ratio"}
QUESTION = "Is there a circle in the image?"

# Runs in a fresh interpreter that never imports crystalvlm: what a user with plain transformers does.
PLAIN_TRANSFORMERS = r"""
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

path, image_path, question, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
model = AutoModelForImageTextToText.from_pretrained(path).eval()
processor = AutoProcessor.from_pretrained(path)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=Image.open(image_path).convert("RGB"), text=prompt, return_tensors="pt")
with torch.no_grad():
    out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
new = out[0, inputs["input_ids"].shape[1]:].tolist()
print(json.dumps({"class": type(model).__name__, "prompt_ids": inputs["input_ids"][0].tolist(), "new_ids": new,
                  "text": processor.decode(new, skip_special_tokens=True).strip(),
                  "imported_crystalvlm": any(m.startswith("crystalvlm") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def report(smoke_quickstart) -> dict:
    return json.loads((smoke_quickstart / "report.json").read_text())


def _eval_image(out: Path) -> Path:
    return sorted((out / "world" / "images" / "eval").glob("*.png"))[0]


def test_report_has_the_promised_fields(smoke_quickstart, report):
    assert report["wall_seconds"] > 0
    # Per phase, wall and CPU seconds under the same keys, and the load they were taken at.
    assert set(report["cpu_timings"]) == set(report["timings"]) >= {"prepare_s", "eval_before_s", "train_s", "eval_after_s"}
    assert all(seconds >= 0 for seconds in report["cpu_timings"].values()) and report["cpu_seconds"] > 0
    assert report["load_average"] is None or report["load_average"] >= 0
    benchmarks = report["benchmarks"]
    assert set(benchmarks) == {"pope_random", "pope_popular", "pope_adversarial", "mme"}
    for split in ("pope_random", "pope_popular", "pope_adversarial"):
        for when in ("before", "after"):
            scores = benchmarks[split][when]
            assert set(scores) >= POPE_METRICS
            assert all(0.0 <= scores[m] <= 1.0 for m in POPE_METRICS)
    mme = benchmarks["mme"]["after"]
    assert "total" in mme and 0.0 <= mme["total"] <= 2800.0
    subtasks = [k for k in mme if k not in ("total", "perception", "cognition")]
    assert subtasks and all(0.0 <= mme[s] <= 200.0 for s in subtasks)
    assert mme["total"] == pytest.approx(mme.get("perception", 0.0) + mme.get("cognition", 0.0))
    page = (smoke_quickstart / "report.html").read_text()
    assert page.count("<img") >= 4 and "<table" in page and "pope_random" in page


def test_run_folder_is_reproducible_record(smoke_quickstart):
    run = smoke_quickstart / "run"
    assert (run / "recipe.yaml").is_file()
    provenance = json.loads((run / "provenance.json").read_text())
    assert provenance["seed"] == 0
    hashed = json.dumps(provenance)
    assert "finetune.json" in hashed and "align.json" in hashed
    for stage in ("align", "finetune"):
        rows = [json.loads(line) for line in (run / stage / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(r["loss"] > 0 for r in rows)


@pytest.mark.parametrize("stage", ["align", "finetune"])
def test_stage_checkpoint_loads_with_plain_transformers_and_matches_generate(smoke_quickstart, stage, capsys):
    from transformers import AutoTokenizer

    from crystalvlm.data.templates import Turn, get_template
    from crystalvlm.models.checkpoint import read_sidecar

    checkpoint = smoke_quickstart / "run" / stage / "final"
    image = _eval_image(smoke_quickstart)
    result = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(checkpoint), str(image), QUESTION, "12"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    plain = json.loads(result.stdout.strip().splitlines()[-1])
    assert plain["class"] == "LlavaForConditionalGeneration"
    assert not plain["imported_crystalvlm"]

    # The saved chat template builds exactly the prompt the model was trained with.
    info = read_sidecar(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    template = get_template(info.template)
    prompt_ids, _ = template.encode([Turn("user", f"<image>\n{QUESTION}")], tokenizer, add_generation_prompt=True)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    expanded = plain["prompt_ids"]  # the processor repeats <image> once per image token
    collapsed = [t for i, t in enumerate(expanded) if not (t == image_token and i > 0 and expanded[i - 1] == image_token)]
    assert collapsed == prompt_ids

    # Greedy generation through crystalvlm matches plain transformers token for token.
    capsys.readouterr()
    code = cli_main(["generate", str(checkpoint), "--image", str(image), "--prompt", QUESTION, "--max-new-tokens", "12"])
    assert code == 0
    ours = capsys.readouterr().out.strip()
    assert ours == plain["text"]


def test_chat_answers_about_a_new_image(smoke_quickstart, monkeypatch, capsys):
    import io

    checkpoint = smoke_quickstart / "run" / "finetune" / "final"
    image = _eval_image(smoke_quickstart)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/image {image}\n{QUESTION}\nWhat colour is it?\n/reset\n/quit\n"))
    assert cli_main(["chat", str(checkpoint), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert f"(new chat about {image})" in out and out.count("assistant> ") == 2 and "(new chat)" in out


def test_same_seed_gives_same_data_and_scores(smoke_quickstart, report, tmp_path):
    from crystalvlm.worlds.quickstart import run_quickstart

    again = run_quickstart(tmp_path / "again", scale="smoke", seed=0)
    assert again["benchmarks"] == report["benchmarks"]
    first = json.loads((smoke_quickstart / "world" / "manifest.json").read_text())
    second = json.loads((tmp_path / "again" / "world" / "manifest.json").read_text())
    assert first["sha256"] == second["sha256"]


def test_eval_command_reproduces_the_report(smoke_quickstart, report, tmp_path, capsys):
    from crystalvlm.worlds.shapes.world import QUICKSTART_MAX_NEW_TOKENS

    checkpoint = smoke_quickstart / "run" / "finetune" / "final"
    out = tmp_path / "eval"
    code = cli_main(["eval", str(checkpoint), "--tasks", "pope,mme", "--benchmarks", str(smoke_quickstart / "world"),
                     "--max-new-tokens", str(QUICKSTART_MAX_NEW_TOKENS), "--out", str(out), "--quiet"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())["results"]
    for task in ("pope_random", "pope_popular", "pope_adversarial"):
        for metric in POPE_METRICS:
            assert results[task][metric] == pytest.approx(report["benchmarks"][task]["after"][metric], abs=1e-12)
    mme = report["benchmarks"]["mme"]["after"]
    assert results["mme"]["perception"] + results["mme"].get("cognition", 0.0) == pytest.approx(mme["total"])


def test_serve_answers_the_openai_client(smoke_quickstart, capsys):
    import base64
    import socket
    import time
    import urllib.request

    from openai import OpenAI

    checkpoint = smoke_quickstart / "run" / "finetune" / "final"
    image = _eval_image(smoke_quickstart)
    capsys.readouterr()
    assert cli_main(["generate", str(checkpoint), "--image", str(image), "--prompt", QUESTION,
                     "--max-new-tokens", "12"]) == 0
    expected = capsys.readouterr().out.strip()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "crystalvlm.cli", "serve", str(checkpoint), "--port", str(port),
                               "--api-key", "k", "--model-name", "quickstart"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.5)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                 {"type": "text", "text": QUESTION}]}]
        reply = client.chat.completions.create(model="quickstart", messages=messages, max_tokens=12, temperature=0)
        assert reply.choices[0].message.content.strip() == expected
        pieces = [chunk.choices[0].delta.content or "" for chunk in
                  client.chat.completions.create(model="quickstart", messages=messages, max_tokens=12, temperature=0,
                                                 stream=True) if chunk.choices]
        assert "".join(pieces).strip() == expected
    finally:
        server.terminate()
        server.wait(timeout=30)
