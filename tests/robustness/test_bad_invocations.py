"""Every bad invocation gets one clear line and a non-zero exit, never a traceback, and is refused
before any expensive work (no world prepared, no run folder written, no model loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crystalvlm.cli import main as cli_main


def _bad_record_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Say hello."},
                                                   {"from": "gpt", "value": "Hello."}]}]))
    return path


def _garbage_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text("stages: [unclosed\n  : :\n")
    return path


def _corrupt_png(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return path


CASES = [
    # (name, argv builder, words the one-line message must contain)
    ("unknown recipe", lambda t, ckpt: ["train", "nonexistent", "--out", str(t / "run")], ["unknown recipe 'nonexistent'"]),
    ("not a recipe", lambda t, ckpt: ["train", "/etc/passwd", "--out", str(t / "run")], ["/etc/passwd"]),
    ("unreadable recipe", lambda t, ckpt: ["train", str(_garbage_yaml(t)), "--out", str(t / "run")], ["broken.yaml"]),
    ("bad --set key", lambda t, ckpt: ["train", "tiny", "--set", "foo=bar", "--out", str(t / "run")],
     ["unknown key 'foo'", "stages"]),
    ("bad --set stage field", lambda t, ckpt: ["train", "tiny", "--set", "stages.align.batchsize=8", "--out", str(t / "run")],
     ["unknown key 'batchsize'", "batch_size"]),
    ("bad --set value", lambda t, ckpt: ["train", "tiny", "--set", "stages.align.batch_size=many", "--out", str(t / "run")],
     ["expects int", "many"]),
    ("unknown stage", lambda t, ckpt: ["train", "tiny", "--stage", "pretrain", "--out", str(t / "run")],
     ["no stage 'pretrain'"]),
    ("missing data", lambda t, ckpt: ["train", "tiny", "--data", str(t / "missing.json"), "--out", str(t / "run")],
     ["missing.json"]),
    ("image folder without data", lambda t, ckpt: ["train", "tiny", "--image-folder", str(t), "--out", str(t / "run")],
     ["--image-folder needs --data"]),
    ("missing model for data check", lambda t, ckpt: ["data", "check", str(_bad_record_file(t)), "--model", "/nonexist"],
     ["/nonexist"]),
    ("missing data file for data check", lambda t, ckpt: ["data", "check", str(t / "none.json"), "--model", str(ckpt)],
     ["none.json"]),
    ("missing model for generate", lambda t, ckpt: ["generate", "/nonexist", "--prompt", "hi"], ["/nonexist"]),
    ("missing model for serve", lambda t, ckpt: ["serve", "/nonexist", "--port", "0"], ["/nonexist"]),
    ("missing model for eval", lambda t, ckpt: ["eval", "/nonexist", "--tasks", "pope", "--benchmarks", str(t)],
     ["/nonexist"]),
    ("bad image for generate", lambda t, ckpt: ["generate", str(ckpt), "--image", str(_corrupt_png(t)), "--prompt", "hi"],
     ["corrupt.png"]),
]


@pytest.mark.parametrize("name,argv,words", CASES, ids=[case[0] for case in CASES])
def test_a_bad_invocation_gets_one_clear_line_and_starts_nothing(name, argv, words, tmp_path, tiny_checkpoint, capsys):
    try:
        code = cli_main(argv(tmp_path, tiny_checkpoint))
    except SystemExit as exit_info:  # argparse and some commands end with SystemExit(code)
        code = exit_info.code
    captured = capsys.readouterr()
    assert code != 0, f"{name}: exit code 0"
    assert "Traceback" not in captured.err + captured.out
    message = captured.err.strip().splitlines()
    assert message, f"{name}: nothing on stderr"
    for word in words:
        assert word in message[-1], f"{name}: {word!r} not in {message[-1]!r}"
    assert not (tmp_path / "run").exists(), f"{name}: a run folder was started"


def test_version_and_help_show_defaults(capsys):
    from crystalvlm import __version__

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out
    # Each module adds its own subcommands; the defaults show in all of them.
    for command, shown in ((["train"], "(default: runs/latest)"), (["serve"], "(default: 8000)"),
                           (["web2code", "synth"], "(default: 0)"), (["eval"], "(default: greedy)")):
        with pytest.raises(SystemExit):
            cli_main([*command, "--help"])
        printed = capsys.readouterr().out
        assert shown in printed, f"{command}: {shown} not in its help"
        assert "(default: None)" not in printed and "(default: False)" not in printed


def test_every_option_of_every_command_has_help_text():
    import argparse

    from crystalvlm.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "crystalvlm")
    assert not missing, "options without help: " + ", ".join(missing)
