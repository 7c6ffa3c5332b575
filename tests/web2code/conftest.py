"""Fixtures for the Web2Code tests: warm render pools wired to a network canary, a fake
OpenAI-compatible server, and the source-format fixture folder.

The canary is a TCP and a UDP socket on 127.0.0.1. The pools send anything that gets past request
interception to the TCP socket (their `fallback_proxy`) and WebRTC tests name the UDP socket as a
STUN server, so a single byte arriving there means a page reached the network. Nothing in these
tests contacts anything beyond this machine: example.com and 10.0.0.1 only appear inside pages,
whose requests are refused before any connection is made.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "web2code"
SMALL_VIEWPORT = (320, 240)


def pytest_collection_modifyitems(config, items):
    from crystalvlm.web2code.render import browser_available

    if browser_available():
        return
    skip = pytest.mark.skip(reason="needs Playwright and Chromium (apt-get install chromium; pip install playwright)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@dataclass
class Canary:
    tcp_port: int
    udp_port: int
    hits: list = field(default_factory=list)  # (protocol, first bytes) of everything that arrived

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.tcp_port}"


@pytest.fixture(scope="session")
def canary():
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    found = Canary(tcp.getsockname()[1], udp.getsockname()[1])

    def watch_tcp() -> None:
        while True:
            try:
                connection, _ = tcp.accept()
            except OSError:  # closed at teardown
                return
            connection.settimeout(1.0)
            try:
                data = connection.recv(200)
            except OSError:
                data = b""
            found.hits.append(("tcp", data))
            connection.close()

    def watch_udp() -> None:
        while True:
            try:
                data, _ = udp.recvfrom(2048)
            except OSError:
                return
            found.hits.append(("udp", data[:40]))

    threads = [threading.Thread(target=watch_tcp, daemon=True), threading.Thread(target=watch_udp, daemon=True)]
    for thread in threads:
        thread.start()
    yield found
    for sock in (tcp, udp):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
    for thread in threads:
        thread.join(timeout=2)


@pytest.fixture(scope="session")
def pool(canary):
    """JavaScript off (the default), small viewport, two reused pages, each word's box read out."""
    from crystalvlm.web2code.render import RenderPool, RenderSettings

    with RenderPool(RenderSettings(viewport=SMALL_VIEWPORT, timeout_s=6.0, workers=2, word_boxes=True,
                                   fallback_proxy=canary.proxy)) as warm:
        yield warm


@pytest.fixture(scope="session")
def js_pool(canary):
    """JavaScript on, a short time limit (hostile scripts run into it)."""
    from crystalvlm.web2code.render import RenderPool, RenderSettings

    with RenderPool(RenderSettings(viewport=SMALL_VIEWPORT, timeout_s=3.0, workers=2, java_script=True,
                                   fallback_proxy=canary.proxy)) as warm:
        yield warm


# ----------------------------------------------------------------------------- fake LLM server
@dataclass
class FakeChatServer:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1. `replies` is a function from the
    request body to the reply text (or to (status, raw body) for a failing answer); every request
    is kept in `requests` as (headers, body)."""
    base_url: str
    requests: list = field(default_factory=list)
    replies: object = None


@pytest.fixture()
def fake_chat_server(monkeypatch):
    # urllib honours proxy variables; a local test server must be reached directly.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    state = FakeChatServer(base_url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length) or b"{}")
            state.requests.append((dict(self.headers), body))
            if self.path != "/v1/chat/completions":
                self._send(404, b'{"error": "not found"}')
                return
            reply = state.replies(body)
            if isinstance(reply, tuple):
                status, raw = reply
                self._send(status, raw)
                return
            answer = {"id": "fake", "object": "chat.completion", "model": body.get("model"),
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                   "finish_reason": "stop"}]}
            self._send(200, json.dumps(answer).encode())

        def _send(self, status: int, raw: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args) -> None:  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=2)
