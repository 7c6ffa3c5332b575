"""`crystalvlm serve` against hostile clients and hostile web pages: every limit is the server's, every
refusal is a 4xx (503 when busy) in OpenAI's error shape, and nothing a client sends reaches an
expensive step (tokenising, decoding, a foreign image decoder) before the cheap checks passed.

Most tests talk to the app in-process (`TestClient`, Host `localhost`); the hang-up test needs a real
socket, so it runs uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
import threading
import time
from contextlib import contextmanager

import pytest
from PIL import Image

from crystalvlm.infer.openai_protocol import ServerLimits

MODEL = "tiny-llava"
QUESTION = "What colour is the square?"


# ---------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    from crystalvlm.infer.engine import GenerationEngine

    return GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=4)


@contextmanager
def app_client(engine, api_key=None, allowed_hosts=None, **limits):
    from fastapi.testclient import TestClient

    from crystalvlm.infer.server import LOCAL_HOSTS, build_app

    app = build_app(engine, MODEL, api_key=api_key, limits=ServerLimits(**limits),
                    allowed_hosts=LOCAL_HOSTS if allowed_hosts is None else allowed_hosts)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        client.app_state = app.state
        yield client


def encoded(image: Image.Image, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


def ask(question: str = QUESTION, *image_urls: str, **settings) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return {"model": MODEL, "max_tokens": 2, **settings,
            "messages": [{"role": "user", "content": parts + [{"type": "text", "text": question}]}]}


def small_png() -> bytes:
    return encoded(Image.new("RGB", (32, 24), (200, 30, 30)))


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ---------------------------------------------------------------------------- memory
def test_a_one_bit_5000_pixel_square_png_is_refused_by_default(engine):
    """A few KB of PNG that would decode to 75 MB of RGB: refused from its header under the default limits."""
    bomb = encoded(Image.new("1", (5000, 5000)))
    assert len(bomb) < 100_000
    with app_client(engine) as client:
        response = client.post("/v1/chat/completions", json=ask(QUESTION, data_url(bomb)))
    assert response.status_code == 400
    error = error_of(response)
    assert "5000x5000 = 25000000 pixels is over the limit of 16777216" in error["message"]
    assert error["param"] == "messages[0].content[0]" and error["code"] == "invalid_image"


def test_requests_in_flight_and_their_decoded_pixels_are_capped(engine):
    with app_client(engine, max_concurrent_requests=2, max_image_pixels=2000, max_images=2,
                    max_pending_pixels=4000) as client:
        admission = client.app_state.admission
        first, second = admission.admit(), admission.admit()  # two requests being answered
        busy = client.post("/v1/chat/completions", json=ask())
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "2 requests are already being answered" in error_of(busy)["message"]
        second.release()
        first.hold_pixels(50, 50)  # 2500 of the 4000 pixels held: a 32x24 image (768) fits, two do not
        image = data_url(small_png())
        assert client.post("/v1/chat/completions", json=ask(QUESTION, image)).status_code == 200
        busy = client.post("/v1/chat/completions", json=ask(QUESTION, image, image))
        assert busy.status_code == 503 and "decoded image pixels" in error_of(busy)["message"]
        first.release()
        assert client.post("/v1/chat/completions", json=ask(QUESTION, image, image)).status_code == 200
        assert (admission.requests, admission.pixels) == (0, 0)  # every answered or refused request gave its share back


def test_the_default_body_limit_is_16_mib_and_the_operator_sets_it(engine):
    padded = json.dumps(ask()).encode()[:-1] + b" " * (17 * 2**20) + b"}"  # valid JSON of 17 MiB
    headers = {"Content-Type": "application/json"}
    with app_client(engine) as client:
        response = client.post("/v1/chat/completions", content=padded, headers=headers)
        assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"
        assert str(16 * 2**20) in error_of(response)["message"]
    with app_client(engine, max_request_bytes=20 * 2**20) as client:
        assert client.post("/v1/chat/completions", content=padded, headers=headers).status_code == 200


def test_the_body_is_parsed_off_the_event_loop(engine, monkeypatch):
    import crystalvlm.infer.server as server

    calls = []
    real = server.parse_chat_request

    def spy(body, *args):
        try:
            asyncio.get_running_loop()
            calls.append(("on the event loop", type(body)))
        except RuntimeError:
            calls.append(("in a worker thread", type(body)))
        return real(body, *args)

    monkeypatch.setattr(server, "parse_chat_request", spy)
    with app_client(engine) as client:
        assert client.post("/v1/chat/completions", json=ask()).status_code == 200
    assert calls == [("in a worker thread", bytes)]  # the raw bytes: JSON parsing happens there too


def test_deeply_nested_or_huge_number_json_is_a_400(engine):
    headers = {"Content-Type": "application/json"}
    with app_client(engine) as client:
        for body in (b"[" * 100_000, b'{"model": "tiny-llava", "seed": ' + b"9" * 10_000 + b"}"):
            response = client.post("/v1/chat/completions", content=body, headers=headers)
            assert response.status_code == 400 and "not valid JSON" in error_of(response)["message"]


def test_text_is_measured_in_characters_before_it_is_tokenised(engine, monkeypatch):
    prepared = []
    real = engine.prepare
    monkeypatch.setattr(engine, "prepare", lambda *args, **kwargs: prepared.append(1) or real(*args, **kwargs))
    with app_client(engine, max_prompt_tokens=100) as client:
        bound = client.app_state.limits.max_prompt_chars
        assert 600 < bound < 10_000  # derived from the tokenizer's longest vocabulary entry
        response = client.post("/v1/chat/completions", json=ask("word " * 200_000))
        assert response.status_code == 400
        error = error_of(response)
        assert error["code"] == "context_length_exceeded" and f"over {bound} characters" in error["message"]
        assert prepared == []  # never tokenised
        # Under the character bound but over the token limit: tokenised, then refused by tokens.
        response = client.post("/v1/chat/completions", json=ask("word " * 120))
        assert response.status_code == 400 and "this server accepts at most 100" in error_of(response)["message"]
        assert prepared == [1]
    # The operator may set the bound.
    with app_client(engine, max_prompt_chars=50) as client:
        response = client.post("/v1/chat/completions", json=ask("x" * 51))
        assert response.status_code == 400 and "over 50 characters" in error_of(response)["message"]


def test_stop_strings_are_capped_in_number_and_length(engine):
    with app_client(engine) as client:
        long_stop = client.post("/v1/chat/completions", json=ask(stop=["x" * 5000]))
        assert long_stop.status_code == 400
        assert error_of(long_stop)["message"] == "stop string 0 has 5000 characters; at most 64 are accepted"
        many = client.post("/v1/chat/completions", json=ask(stop=["a", "b", "c", "d", "e"]))
        assert many.status_code == 400 and "at most 4 are accepted" in error_of(many)["message"]
        assert client.post("/v1/chat/completions", json=ask(stop=["x" * 64, "END"])).status_code == 200


def test_a_request_cannot_raise_a_limit(engine):
    """Fields named like the limits are ignored (OpenAI's unknown fields are accepted and ignored)."""
    with app_client(engine, max_stop_chars=8) as client:
        response = client.post("/v1/chat/completions", json=ask(stop=["x" * 9], max_stop_chars=100,
                                                                limits={"max_stop_chars": 100}))
        assert response.status_code == 400 and "at most 8 are accepted" in error_of(response)["message"]


# ---------------------------------------------------------------------------- image formats
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 moveto 16 16 lineto stroke\nshowpage\n"


@pytest.fixture
def ghostscript_calls(monkeypatch):
    """Records any attempt of Pillow to run Ghostscript (it must never happen)."""
    from PIL import EpsImagePlugin

    calls = []

    def fake_ghostscript(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", fake_ghostscript)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    return calls


def test_only_whitelisted_image_formats_are_decoded(engine, ghostscript_calls):
    tiff = encoded(Image.new("RGB", (16, 16)), "TIFF")
    with app_client(engine) as client:
        for data, name in ((EPS, "EPS"), (tiff, "TIFF")):
            response = client.post("/v1/chat/completions", json=ask(QUESTION, data_url(data)))  # claims image/png
            assert response.status_code == 400
            error = error_of(response)
            assert error["message"] == (f"messages[0].content[0]: the image is {name}, a format refused here; "
                                        "accepted formats: PNG, JPEG, WEBP, GIF, BMP")
        for kind in ("PNG", "JPEG", "WEBP", "GIF", "BMP"):
            image = data_url(encoded(Image.new("RGB", (20, 20), (10, 200, 10)), kind))
            assert client.post("/v1/chat/completions", json=ask(QUESTION, image)).status_code == 200, kind
    assert ghostscript_calls == []


def test_the_data_loader_refuses_eps_too(tmp_path, ghostscript_calls):
    from crystalvlm.data.images import ImageError, open_image

    (tmp_path / "page.eps").write_bytes(EPS)
    (tmp_path / "ok.png").write_bytes(small_png())
    with pytest.raises(ImageError, match=r"page.eps: the image is EPS, a format refused here; accepted formats: .*TIFF"):
        open_image(tmp_path, "page.eps")
    assert open_image(tmp_path, "ok.png").size == (32, 24)
    assert ghostscript_calls == []


# ---------------------------------------------------------------------------- hostile web pages
def test_a_post_must_be_json(engine):
    """A page may POST text/plain (or a form) to localhost without a preflight: refused."""
    body = json.dumps(ask())
    with app_client(engine) as client:  # no API key: the case that matters
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
            headers = {"Content-Type": content_type} if content_type else {}
            response = client.post("/v1/chat/completions", content=body, headers=headers)
            assert response.status_code == 415, content_type
            assert "Content-Type: application/json" in error_of(response)["message"]
        response = client.post("/v1/chat/completions", content=body,
                               headers={"Content-Type": "Application/JSON; charset=utf-8"})
        assert response.status_code == 200


def test_the_host_header_must_name_this_server(engine):
    """DNS rebinding: a page on attacker.example, rebound to 127.0.0.1, sends Host: attacker.example."""
    with app_client(engine, allowed_hosts=("localhost", "127.0.0.1", "::1", "gpu-box.lan")) as client:
        for path in ("/v1/models", "/", "/health", "/openapi.json"):
            response = client.get(path, headers={"Host": "attacker.example:8000"})
            assert response.status_code == 400, path
            error = error_of(response)
            assert error["code"] == "host_not_allowed" and "'attacker.example:8000'" in error["message"]
        refused = client.post("/v1/chat/completions", json=ask(), headers={"Host": "localhost.attacker.example"})
        assert refused.status_code == 400
        for host in ("localhost:8000", "127.0.0.1:8000", "[::1]:8000", "GPU-BOX.lan", "192.168.7.20:8000", "[fe80::1]"):
            assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host
    with app_client(engine, allowed_hosts=("*",)) as client:
        assert client.get("/v1/models", headers={"Host": "anything.example"}).status_code == 200


# ---------------------------------------------------------------------------- hang-ups and failures
class SlowEngine:
    """Stands in for an engine: prompts from the real one, generation slow (50 ms a token) and cancellable."""

    def __init__(self, engine) -> None:
        self.real = engine
        self.batch_size = 4
        self.tokenizer = engine.tokenizer
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def prepare(self, request, max_new_tokens=0):
        return self.real.prepare(request, max_new_tokens)

    def generate(self, requests, config, progress=False, listeners=None):
        from crystalvlm.infer.engine import GenerationResult

        self.started.set()
        for _ in range(config.max_new_tokens):
            if all(request.cancel is not None and request.cancel.is_set() for request in requests):
                self.cancelled.set()
                return [GenerationResult("", [], "cancelled") for _ in requests]
            time.sleep(0.05)
        return [GenerationResult("done", [1] * config.max_new_tokens, "length", 1) for _ in requests]


@contextmanager
def live_server(app):
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_client_that_hangs_up_stops_its_generation(engine, stream):
    from crystalvlm.infer.server import build_app

    slow = SlowEngine(engine)
    app = build_app(slow, MODEL, limits=ServerLimits(max_tokens=400))  # a full answer takes 20 s
    with live_server(app) as port:
        body = json.dumps(ask(max_tokens=400, stream=stream)).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
                               + b"\r\n\r\n" + body)
            assert slow.started.wait(10), "generation did not start"
        hung_up = time.monotonic()
        assert slow.cancelled.wait(5), "the generation went on after the client hung up"
        assert time.monotonic() - hung_up < 3
        deadline = time.monotonic() + 5
        while app.state.admission.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert app.state.admission.requests == 0  # its place is given back


def test_a_body_that_arrives_too_slowly_is_cut_off_and_its_place_given_back(engine):
    from crystalvlm.infer.server import build_app

    app = build_app(engine, MODEL, limits=ServerLimits(body_timeout_s=0.5, max_concurrent_requests=1))
    with live_server(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\": ")
            began = time.monotonic()
            answer = b""
            while b"}}" not in answer:  # the whole JSON error body
                received = connection.recv(4096)
                assert received, f"the connection closed after {answer!r}"
                answer += received
            assert time.monotonic() - began < 3
            answer = answer.decode()
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 0.5 s" in answer
        assert app.state.admission.requests == 0


class FailingEngine(SlowEngine):
    def generate(self, requests, config, progress=False, listeners=None):
        raise RuntimeError("CUDA error at /home/alice/secret-model/weights.bin")


def test_a_failure_answers_500_without_its_details_which_go_to_the_log(engine, caplog):
    from fastapi.testclient import TestClient

    from crystalvlm.infer.server import build_app

    app = build_app(FailingEngine(engine), MODEL)
    with caplog.at_level(logging.ERROR), TestClient(app, base_url="http://localhost",
                                                    raise_server_exceptions=False) as client:
        response = client.post("/v1/chat/completions", json=ask())
        assert response.status_code == 500
        error = error_of(response)
        assert error["type"] == "server_error" and "details are in the server log" in error["message"]
        assert "alice" not in response.text and "CUDA" not in response.text
        streamed = client.post("/v1/chat/completions", json=ask(stream=True))
        assert streamed.status_code == 200 and "details are in the server log" in streamed.text
        assert "alice" not in streamed.text and streamed.text.endswith("data: [DONE]\n\n")
    logged = "\n".join(record.getMessage() + str(record.exc_info and record.exc_info[1]) for record in caplog.records)
    assert logged.count("/home/alice/secret-model") >= 2


# ---------------------------------------------------------------------------- the command line
def test_serve_refuses_a_bad_limit_before_loading_the_model(tmp_path, capsys):
    from crystalvlm.cli import main

    missing_model = tmp_path / "no-such-checkpoint"
    assert main(["serve", str(missing_model), "--remote-image-network", "intranet"]) == 2
    assert "--remote-image-network 'intranet' is not a network" in capsys.readouterr().err
    assert main(["serve", str(missing_model), "--max-request-mib", "0"]) == 2
    assert "--max-request-mib must be positive" in capsys.readouterr().err
