"""A model part's `revision` reaches every from_pretrained of that part (remote code included),
so a recipe can pin exactly which commit of a Hub repository is loaded and run."""

from __future__ import annotations

import pytest

from crystalvlm.models import build
from crystalvlm.models.build import ModelSpec, PartSpec


class _Stop(Exception):
    pass


def _recording(calls: list, name: str):
    def from_pretrained(path, **options):
        calls.append((name, path, options))
        raise _Stop  # nothing is downloaded: the call's arguments are what is checked

    return from_pretrained


def test_every_load_of_a_pinned_part_carries_its_revision(monkeypatch):
    calls: list = []
    for name in ("AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"):
        monkeypatch.setattr(getattr(build, name), "from_pretrained", _recording(calls, name))
    import transformers

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", _recording(calls, "AutoModel"))
    part = PartSpec(pretrained="org/remote-llm", trust_remote_code=True, revision="0123abc")
    for load in (lambda: build._llm_config(part), lambda: build._vision_config(part),
                 lambda: build._load_vision_weights(None, part), lambda: build._load_llm_weights(None, part)):
        with pytest.raises(_Stop):
            load()
    spec = ModelSpec.from_dict({"vision": {"pretrained": "org/tower"},
                                "llm": {"pretrained": "org/remote-llm", "trust_remote_code": True, "revision": "0123abc"}})
    with pytest.raises(_Stop):
        build.build_llava(spec)
    assert [name for name, _, _ in calls] == ["AutoConfig", "AutoConfig", "AutoModel", "AutoModelForCausalLM",
                                              "AutoTokenizer"]
    for _, path, options in calls:
        assert options == {"trust_remote_code": True, "revision": "0123abc"}, (path, options)


def test_a_separate_tokenizer_is_not_given_the_llms_revision(monkeypatch):
    calls: list = []
    monkeypatch.setattr(build.AutoTokenizer, "from_pretrained", _recording(calls, "AutoTokenizer"))
    spec = ModelSpec.from_dict({"vision": {"pretrained": "org/tower"}, "tokenizer": "org/other-tokenizer",
                                "llm": {"pretrained": "org/llm", "revision": "0123abc"}})
    with pytest.raises(_Stop):
        build.build_llava(spec)
    assert calls == [("AutoTokenizer", "org/other-tokenizer", {"trust_remote_code": False, "revision": None})]


def test_a_revision_needs_a_pretrained_part():
    with pytest.raises(ValueError, match="'revision' pins a pretrained part"):
        PartSpec(config={"model_type": "llama"}, revision="0123abc")
