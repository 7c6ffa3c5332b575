"""`crystalvlm train tiny-web` prepares the web world through the world registry and trains."""

from __future__ import annotations

import json

import pytest

from crystalvlm.cli import main as cli_main
from crystalvlm.worlds.web.world import WebWorld


@pytest.mark.browser
def test_train_tiny_web_prepares_its_world_and_trains_both_stages(tmp_path, capsys):
    sets = [arg for override in WebWorld.smoke_overrides if not override.startswith("stages.")
            for arg in ("--set", override)]
    out = tmp_path / "run"
    assert cli_main(["train", "tiny-web", "--out", str(out), "--max-steps", "2", "--quiet", *sets]) == 0
    printed = capsys.readouterr().out
    assert "stage align: 2 steps" in printed and "stage finetune: 2 steps" in printed
    prepared = json.loads((out / "world" / "prepared.json").read_text())
    assert set(prepared["steps"]) == {"world", "tokenizer", "vision", "lm"}
    assert prepared["settings"]["world"] == "web" and prepared["settings"]["n_train"] == 40
    for stage in ("align", "finetune"):
        assert (out / stage / "final" / "config.json").is_file()
