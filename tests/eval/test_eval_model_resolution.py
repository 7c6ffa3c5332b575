"""`crystalvlm eval MODEL` takes a Hub id like every command that takes a model: one that is not
in the Hugging Face cache is refused up front, with the message that says how to get it."""

from __future__ import annotations

from crystalvlm.cli import main


def test_eval_refuses_an_uncached_hub_id_with_the_message(benchmarks, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    code = main(["eval", "someone/not-downloaded", "--tasks", "mme", "--benchmarks", str(benchmarks),
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: model 'someone/not-downloaded' is not a local folder and is not in the Hugging Face cache")
    assert not (tmp_path / "out").exists()
