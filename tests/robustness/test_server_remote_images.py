"""Remote image URLs (`--allow-remote-images`) cannot turn the server against its own network.

A small HTTP server on 127.0.0.1 plays every site: an image, a redirect, a 404, a slow drip, an
oversized answer, a connection closed without an answer. Loopback is not public, so a test that must
reach it allows 127.0.0.1/32 the way an operator allows an intranet; name resolution is replaced by a
table (`resolve_addresses`), standing in for DNS.
"""

from __future__ import annotations

import http.server
import io
import ipaddress
import socket
import threading
import time
from contextlib import contextmanager

import pytest
from PIL import Image

from crystalvlm.infer.openai_protocol import ServerLimits

MODEL = "tiny-llava"
GENERIC = "messages[0].content[0]: the image could not be fetched from its URL"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (30, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


class Site:
    """What the loopback server was asked: (path, Host header) per request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.port = 0


@pytest.fixture
def site():
    record = Site()
    image = png()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (the http.server API)
            record.requests.append((self.path, self.headers.get("Host", "")))
            if self.path == "/square.png":
                self.answer(200, image)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{record.port}/square.png")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/big":
                self.answer(200, b"\x89PNG" + b"\0" * 200_000)
            elif self.path == "/drip":  # a byte every 0.2 s, for 6 s: every read is quick, the whole is not
                self.send_response(200)
                self.send_header("Content-Length", "30")
                self.end_headers()
                for _ in range(30):
                    time.sleep(0.2)
                    try:
                        self.wfile.write(b"\0")
                        self.wfile.flush()
                    except OSError:
                        return
            elif self.path == "/close":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
            elif self.path == "/hang":
                time.sleep(4)
            else:
                self.answer(404, b"not found")

        def answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    record.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield record
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    from crystalvlm.infer.engine import GenerationEngine

    return GenerationEngine.from_checkpoint(tiny_checkpoint, batch_size=2)


@contextmanager
def app_client(engine, **limits):
    from fastapi.testclient import TestClient

    from crystalvlm.infer.server import build_app

    settings = {"allow_remote_images": True, "max_image_bytes": 60_000, "remote_image_timeout_s": 1.0, **limits}
    app = build_app(engine, MODEL, limits=ServerLimits(**settings))
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        yield client


def ask_about(url: str) -> dict:
    return {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What colour?"}]}]}


@pytest.fixture
def dns(monkeypatch):
    """A name -> addresses table standing in for DNS; records each lookup."""
    from crystalvlm.infer import remote_images

    table: dict[str, list[str]] = {}
    lookups: list[str] = []

    def resolve(host, port):
        lookups.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return table[host]

    monkeypatch.setattr(remote_images, "resolve_addresses", resolve)
    table["lookups"] = lookups  # type: ignore[assignment]
    return table


def test_non_public_addresses_are_refused_without_connecting(engine, site):
    loopback = f"http://127.0.0.1:{site.port}/square.png"
    with app_client(engine) as client:
        for url in (loopback, f"http://localhost:{site.port}/square.png", f"http://[::ffff:127.0.0.1]:{site.port}/square.png",
                    f"http://0x7f000001:{site.port}/square.png", "http://169.254.169.254/latest/meta-data/",
                    "http://10.0.0.1/a.png", "http://[::1]/a.png", "http://[fd00::1]/a.png", "http://224.0.0.1/a.png",
                    "http://100.64.0.1/a.png", "http://0.0.0.0/a.png", "http://[64:ff9b::7f00:1]/a.png"):
            response = client.post("/v1/chat/completions", json=ask_about(url))
            assert response.status_code == 400, url
            error = response.json()["error"]
            assert error["message"] == GENERIC and error["code"] == "remote_image_unavailable", url
    assert site.requests == []
    # The operator can allow a network; then the same URL is fetched.
    with app_client(engine, remote_image_networks=("127.0.0.1/32",)) as client:
        assert client.post("/v1/chat/completions", json=ask_about(loopback)).status_code == 200
    assert [path for path, _ in site.requests] == ["/square.png"]


def test_public_address_rules():
    from crystalvlm.infer.remote_images import is_public

    public = ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "2002:5db8:d70e::1"]  # the last: 6to4 of a public v4
    private = ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
               "224.0.0.251", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1",
               "::ffff:10.0.0.1", "2002:7f00:1::1", "64:ff9b::a00:1", "2001::1", "198.18.0.1", "192.0.2.1"]
    assert [address for address in public if not is_public(ipaddress.ip_address(address))] == []
    assert [address for address in private if is_public(ipaddress.ip_address(address))] == []


def test_the_connection_goes_to_the_address_that_was_checked(engine, site, dns):
    """DNS rebinding: the name is resolved once, and the connection goes to that checked address
    (the system resolver is never asked for images.test, which it could not resolve anyway)."""
    dns["images.test"] = ["127.0.0.1"]
    with app_client(engine, remote_image_networks=("127.0.0.1/32",)) as client:
        response = client.post("/v1/chat/completions", json=ask_about(f"http://images.test:{site.port}/square.png"))
        assert response.status_code == 200, response.text
    assert dns["lookups"] == ["images.test"]
    assert site.requests == [("/square.png", f"images.test:{site.port}")]  # the name still goes in the Host header


def test_a_name_with_any_non_public_address_is_refused(engine, site, dns):
    dns["internal.test"] = ["10.20.30.40"]
    dns["mixed.test"] = ["93.184.215.14", "127.0.0.1"]
    with app_client(engine) as client:
        for name in ("internal.test", "mixed.test", "unknown.test"):
            response = client.post("/v1/chat/completions", json=ask_about(f"http://{name}:{site.port}/square.png"))
            assert response.status_code == 400 and response.json()["error"]["message"] == GENERIC, name
    assert site.requests == []


def test_redirects_are_not_followed(engine, site):
    with app_client(engine, remote_image_networks=("127.0.0.1/32",)) as client:
        response = client.post("/v1/chat/completions", json=ask_about(f"http://127.0.0.1:{site.port}/redirect"))
    assert response.status_code == 400 and response.json()["error"]["message"] == GENERIC
    assert [path for path, _ in site.requests] == ["/redirect"]


def test_one_deadline_covers_the_whole_fetch(engine, site):
    """Each byte of /drip comes quickly; the whole does not: refused at the deadline, not after 6 s."""
    with app_client(engine, remote_image_networks=("127.0.0.1/32",), remote_image_timeout_s=1.0) as client:
        began = time.monotonic()
        response = client.post("/v1/chat/completions", json=ask_about(f"http://127.0.0.1:{site.port}/drip"))
        took = time.monotonic() - began
    assert response.status_code == 400 and response.json()["error"]["message"] == GENERIC
    assert took < 2.5


def test_every_failure_to_fetch_reads_the_same(engine, site, dns):
    """Closed port, connection dropped, no answer in time, 404, too big, refused address: one message,
    so answers cannot map which hosts and ports are open."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    dns["private.test"] = ["192.168.0.10"]
    urls = [f"http://127.0.0.1:{closed_port}/a.png", f"http://127.0.0.1:{site.port}/close",
            f"http://127.0.0.1:{site.port}/hang", f"http://127.0.0.1:{site.port}/gone.png",
            f"http://127.0.0.1:{site.port}/big", f"http://private.test:{site.port}/a.png"]
    answers = []
    with app_client(engine, remote_image_networks=("127.0.0.1/32",), remote_image_timeout_s=0.5) as client:
        for url in urls:
            response = client.post("/v1/chat/completions", json=ask_about(url))
            answers.append((response.status_code, response.json()))
    assert all(answer == answers[0] for answer in answers), answers
    assert answers[0][0] == 400 and answers[0][1]["error"]["message"] == GENERIC


def test_url_text_refusals_are_specific(engine, site):
    """What the URL's text alone shows wrong (no network involved) is named."""
    with app_client(engine) as client:
        for url, message in ((f"http://user:secret@127.0.0.1:{site.port}/square.png", "user name or password"),
                             ("http:///square.png", "no host name"),
                             ("http://" + "a" * 5000 + ".test/x.png", "at most 4096")):
            response = client.post("/v1/chat/completions", json=ask_about(url))
            assert response.status_code == 400 and message in response.json()["error"]["message"], url
    with app_client(engine, allow_remote_images=False) as client:
        response = client.post("/v1/chat/completions", json=ask_about(f"http://127.0.0.1:{site.port}/square.png"))
        assert response.status_code == 400 and "remote image URLs are refused" in response.json()["error"]["message"]
    assert site.requests == []
