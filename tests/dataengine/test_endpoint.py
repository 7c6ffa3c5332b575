"""Records from an OpenAI-compatible endpoint (a local fake server): junk replies dropped with reasons
and fed back into the prompt, a failing endpoint retried then reported, and the round resumed from
the replies already received."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from crystalvlm.dataengine.endpoint import DescribedImage, EndpointError, EndpointSource
from crystalvlm.web2code.openai_http import ChatEndpoint


class FakeLLM:
    """Answers each chat request with the next scripted reply: a string (the content) or an int (an HTTP status)."""

    def __init__(self, script: list) -> None:
        self.script = list(script)
        self.prompts: list[str] = []
        self.statuses: list[int] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (the http.server name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply = fake.script.pop(0) if fake.script else 500
                fake.statuses.append(200 if isinstance(reply, str) else reply)
                if isinstance(reply, int):
                    self.send_response(reply)
                    self.end_headers()
                    self.wfile.write(b"server trouble")
                    return
                fake.prompts.append(body["messages"][0]["content"])
                answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                          "choices": [{"index": 0, "finish_reason": "stop",
                                       "message": {"role": "assistant", "content": reply}}]}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> ChatEndpoint:
        return ChatEndpoint(f"http://127.0.0.1:{self.server.server_port}/v1", "fake", retries=1, retry_wait_s=0.0)


@pytest.fixture
def images(tmp_path) -> list[DescribedImage]:
    out = []
    for index, colour in enumerate(("red", "green", "blue")):
        path = tmp_path / "pool" / f"img{index}.png"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), colour).save(path)
        out.append(DescribedImage(path, f"A {colour} square in the middle."))
    return out


def _valid(question: str, answer: str) -> str:
    return json.dumps({"question": question, "answer": answer})


def _generate(source, tmp_path: Path, counts: dict[str, int], profile: dict | None = None):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    return source.generate(counts, folder, 0, profile or {}, Path("unused"), tmp_path / "workspace")


def test_junk_is_dropped_with_reasons_and_refines_the_prompt(images, tmp_path):
    fake = FakeLLM([_valid("What colour is the square?", "red"), "Sure! Here is a question.",
                    '```json\n{"question": "What shape is it", "answer": "square"}\n```',
                    _valid("What shape is it?", "square")])
    profile = {"worst_examples": {"shape": [{"prompt": "What shape is on the left?\nAnswer briefly.",
                                             "response": "star", "target": "circle"}]}}
    made = _generate(EndpointSource(fake.endpoint, images, question_suffix="Answer briefly."), tmp_path,
                     {"colour": 2, "shape": 2}, profile)
    assert [r["conversations"][1]["value"] for r in made.records] == ["red", "square"]
    assert made.records[0]["conversations"][0]["value"] == "<image>\nWhat colour is the square?\nAnswer briefly."
    assert [d["reason"] for d in made.dropped] == ["the reply is not a JSON object",
                                                   "the question does not end with a question mark"]
    # The model's failures (the profile) are in every shape prompt; the LLM's own junk refines the
    # prompt of its capability from then on.
    assert "What shape is on the left?" in fake.prompts[2] and "What shape is on the left?" not in fake.prompts[0]
    assert "rejected" not in fake.prompts[1] and "rejected" not in fake.prompts[2]
    assert "was rejected (the question does not end with a question mark)" in fake.prompts[3]
    templates = json.loads((tmp_path / "workspace" / "templates.json").read_text())
    assert "not a JSON object" in templates["colour"] and "question mark" not in templates["colour"]
    assert "question mark" in templates["shape"]


def test_a_failing_endpoint_is_retried_reported_and_the_round_resumes(images, tmp_path):
    fake = FakeLLM([_valid("What colour is it?", "red"), 503, 500])
    source = EndpointSource(fake.endpoint, images)
    with pytest.raises(EndpointError, match=r"HTTP 500 .*gave up after 2 attempts"):
        _generate(source, tmp_path, {"colour": 2})
    assert fake.statuses == [200, 503, 500]  # one retry after the 503
    fake.script = [_valid("Is it green?", "no")]
    made = _generate(source, tmp_path, {"colour": 2})
    assert fake.statuses[3:] == [200]  # the first reply came from the round's cache
    assert [r["conversations"][1]["value"] for r in made.records] == ["red", "no"]
