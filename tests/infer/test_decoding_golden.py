"""Every decoding strategy's exact output on the tiny test models, pinned to a recorded file.

The strategies moved behind a registry (decoding/registry.py); this file was recorded before that
change and guards that no strategy's output moved by a single token since. The recording is of
token ids, finish reasons and streamed pieces, from the random `engine` and the `sharp_engine`
(tests/infer/conftest.py) over `mixed_requests`, with and without prefix sharing.

Floating-point sums differ between torch builds, so the comparison runs only under the torch and
transformers versions listed in the file (`versions`: each pair under which these very cases were
obtained); under others it is skipped. To record anew (after a deliberate change of outputs):
CRYSTALVLM_RECORD_GOLDEN=1 pytest tests/infer/test_decoding_golden.py. To add a version pair: record
under it into a copy, and list the pair only if its cases equal the file's.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import transformers

from crystalvlm.infer.decoding.config import DecodingConfig

GOLDEN = Path(__file__).parent / "data" / "decoding_golden.json"
RECORDING = os.environ.get("CRYSTALVLM_RECORD_GOLDEN") == "1"
MAX_NEW = 8

# (engine fixture, decoding string, prefix sharing on)
CASES = [
    ("engine", "greedy", True),
    ("engine", "greedy", False),
    ("engine", "sample:seed=5", True),
    ("engine", "sample:temperature=0.7,top_p=0.9,top_k=20,seed=3", True),
    ("engine", "beam:num_beams=3", True),
    ("engine", "beam:num_beams=2,length_penalty=0.5", False),
    ("engine", "opera:num_beams=3", True),
    ("engine", "vcd", True),
    ("sharp_engine", "greedy", True),
    ("sharp_engine", "sample:temperature=0.8,seed=11", False),
    ("sharp_engine", "beam", True),
    ("sharp_engine", "opera", True),
    ("sharp_engine", "opera:num_beams=3,penalty_weight=0,rollback=off", True),
    ("sharp_engine", "opera:num_beams=2,num_candidates=3,scale_factor=20,penalty_weight=2,warmup=3,threshold=2", True),
    ("sharp_engine", "vcd", True),
    ("sharp_engine", "vcd:alpha=0.5,beta=0.2,noise_step=900", True),
    ("sharp_engine", "vcd:base=sample,seed=2,temperature=0.8,top_p=0.95", True),
]


def case_name(case) -> str:
    fixture, decoding, sharing = case
    return f"{fixture}|{decoding}|{'shared' if sharing else 'plain'}"


def run_case(engine, requests, decoding: str, sharing: bool) -> list[dict]:
    # Two requests with extra stop strings (seen in their recorded answers), so per-request stop rules
    # and answers ended by them are covered too.
    requests = list(requests)
    requests[1] = replace(requests[1], stop_strings=("lit",))
    requests[3] = replace(requests[3], stop_strings=("ce6", "ue"))
    pieces: list[list[str]] = [[] for _ in requests]
    saved = engine.share_prefixes
    engine.share_prefixes = sharing
    try:
        results = engine.generate(requests, DecodingConfig.parse(decoding, max_new_tokens=MAX_NEW),
                                  listeners=[piece_list.append for piece_list in pieces])
    finally:
        engine.share_prefixes = saved
    return [{"token_ids": result.token_ids, "finish_reason": result.finish_reason, "text": result.text,
             "pieces": piece_list} for result, piece_list in zip(results, pieces)]


def versions() -> dict:
    return {"torch": torch.__version__, "transformers": transformers.__version__}


@pytest.fixture(scope="module")
def golden() -> dict:
    if RECORDING or not GOLDEN.exists():
        return {}
    recorded = json.loads(GOLDEN.read_text())
    if versions() not in recorded["versions"]:
        pytest.skip(f"recorded under {recorded['versions']}, running {versions()}: float sums may differ")
    return recorded["cases"]


@pytest.fixture(scope="module")
def recorder():
    cases: dict = {}
    yield cases
    if RECORDING:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"versions": [versions()], "cases": cases}, indent=1, ensure_ascii=False) + "\n")


@pytest.mark.parametrize("case", CASES, ids=case_name)
def test_strategy_output_is_unchanged(case, request, mixed_requests, golden, recorder):
    fixture, decoding, sharing = case
    outputs = run_case(request.getfixturevalue(fixture), mixed_requests, decoding, sharing)
    if RECORDING:
        recorder[case_name(case)] = outputs
        return
    if not golden:
        pytest.skip(f"no recording at {GOLDEN}")
    assert outputs == golden[case_name(case)]
