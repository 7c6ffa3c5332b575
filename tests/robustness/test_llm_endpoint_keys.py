"""The LLM endpoint's API key goes only where the user sent it: never picked up from
$OPENAI_API_KEY (or the client's other variables) for an endpoint it was not named for, never over
plain http to a host that is not loopback, never along a redirect. A fake chat server on 127.0.0.1
records which headers arrive."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from crystalvlm.web2code.openai_http import ChatEndpoint, EndpointError, chat_completion, is_loopback_host

pytest.importorskip("openai")

MESSAGES = [{"role": "user", "content": "hi"}]
ENVIRONMENT_SECRETS = {"OPENAI_API_KEY": "env-secret", "OPENAI_ADMIN_KEY": "admin-secret",
                       "OPENAI_ORG_ID": "org-secret", "OPENAI_PROJECT_ID": "project-secret",
                       "OPENAI_CUSTOM_HEADERS": "X-Leak: custom-secret\nAuthorization: Bearer custom-secret"}


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []  # (path, headers)
        self.redirect_to: str | None = None
        self.redirect_status = 307
        self.base_url = ""


def _serve(recorder: Recorder):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            recorder.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            if recorder.redirect_to is not None and self.path.startswith("/v1/"):
                self.send_response(recorder.redirect_status)
                self.send_header("Location", recorder.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            raw = json.dumps({"id": "x", "object": "chat.completion", "model": "m",
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": "fine"}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:  # noqa: N802 (a 302/303 redirect turns POST into GET in many clients)
            recorder.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture()
def servers(monkeypatch):
    """Two loopback servers: the endpoint the user named, and another one ("elsewhere")."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in ENVIRONMENT_SECRETS.items():
        monkeypatch.setenv(name, value)
    recorders, running = [Recorder(), Recorder()], []
    for recorder in recorders:
        server, thread = _serve(recorder)
        running.append((server, thread))
        recorder.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield recorders
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


def _no_secret_in(headers: dict) -> None:
    text = json.dumps(headers)
    for secret in ("env-secret", "admin-secret", "org-secret", "project-secret", "custom-secret"):
        assert secret not in text, (secret, headers)


def test_no_key_is_sent_unless_one_is_named(servers):
    endpoint, _ = servers
    assert chat_completion(ChatEndpoint(endpoint.base_url, "m", retries=0), MESSAGES) == "fine"
    [(path, headers)] = endpoint.requests
    assert path == "/v1/chat/completions"
    assert "authorization" not in headers
    assert "openai-organization" not in headers and "openai-project" not in headers and "x-leak" not in headers
    _no_secret_in(headers)


def test_the_named_variable_or_the_explicit_key_is_sent_and_nothing_else(servers, monkeypatch):
    endpoint, _ = servers
    monkeypatch.setenv("MY_LOCAL_KEY", "named-key")
    chat_completion(ChatEndpoint(endpoint.base_url, "m", api_key_env="MY_LOCAL_KEY", retries=0), MESSAGES)
    chat_completion(ChatEndpoint(endpoint.base_url, "m", api_key="explicit-key", retries=0), MESSAGES)
    [(_, by_env), (_, explicit)] = endpoint.requests
    assert by_env["authorization"] == "Bearer named-key"
    assert explicit["authorization"] == "Bearer explicit-key"
    for headers in (by_env, explicit):
        _no_secret_in(headers)


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_not_followed_and_the_key_stays_with_the_endpoint(servers, status):
    endpoint, elsewhere = servers
    endpoint.redirect_to, endpoint.redirect_status = elsewhere.base_url + "/chat/completions", status
    with pytest.raises(EndpointError, match=rf"redirect \(HTTP {status} to http://127\.0\.0\.1:\d+/v1/chat/completions\)"):
        chat_completion(ChatEndpoint(endpoint.base_url, "m", api_key="explicit-key", retries=2, retry_wait_s=0.0),
                        MESSAGES)
    assert len(endpoint.requests) == 1  # not retried either
    assert elsewhere.requests == []


@pytest.mark.parametrize("url", ["http://example.com/v1", "http://10.0.0.1:8000/v1", "http://[fe80::1]/v1"])
def test_a_key_is_refused_over_plain_http_except_to_loopback(url, monkeypatch):
    with pytest.raises(ValueError, match="refusing to send an API key over plain http"):
        ChatEndpoint(url, "m", api_key="k")
    monkeypatch.setenv("MY_KEY", "k")
    with pytest.raises(ValueError, match="refusing to send an API key over plain http"):
        ChatEndpoint(url, "m", api_key_env="MY_KEY")
    ChatEndpoint(url, "m")  # no key: nothing to leak
    ChatEndpoint(url.replace("http:", "https:"), "m", api_key="k")
    ChatEndpoint("http://127.0.0.1:8000/v1", "m", api_key="k")
    ChatEndpoint("http://localhost:8000/v1", "m", api_key="k")


def test_loopback_hosts():
    assert is_loopback_host("127.0.0.1") and is_loopback_host("127.8.9.1") and is_loopback_host("::1")
    assert is_loopback_host("[::1]") and is_loopback_host("LOCALHOST")
    assert not is_loopback_host("example.com") and not is_loopback_host("10.0.0.1") and not is_loopback_host("")


def test_the_key_does_not_show_in_the_endpoints_repr():
    assert "hidden-key" not in repr(ChatEndpoint("https://api.example.com/v1", "m", api_key="hidden-key"))


# ----------------------------------------------------------------------------- the command line
def _synth(capsys, *argv: str) -> tuple[int, str]:
    from crystalvlm.cli import main

    status = main(["web2code", "synth", "--out", argv[0], "--n", "1", "--llm-model", "m", "--quiet", *argv[1:]])
    return status, capsys.readouterr().err


def test_the_command_sends_openai_api_key_only_when_named(servers, capsys, tmp_path):
    endpoint, _ = servers
    endpoint.redirect_to = "http://127.0.0.1:9/elsewhere"  # every answer is an error: the run stops after one request
    status, err = _synth(capsys, str(tmp_path / "a"), "--llm-endpoint", endpoint.base_url)
    assert status == 2 and "redirect" in err
    unnamed = [headers for _, headers in endpoint.requests]
    status, err = _synth(capsys, str(tmp_path / "b"), "--llm-endpoint", endpoint.base_url, "--llm-key-env", "OPENAI_API_KEY")
    assert status == 2
    named = [headers for _, headers in endpoint.requests[len(unnamed):]]
    assert unnamed and all("authorization" not in headers for headers in unnamed)
    assert named and all(headers["authorization"] == "Bearer env-secret" for headers in named)


def test_the_command_refuses_a_key_over_plain_http_before_sending_anything(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("REMOTE_KEY", "k")
    status, err = _synth(capsys, str(tmp_path), "--llm-endpoint", "http://example.com/v1", "--llm-key-env", "REMOTE_KEY")
    assert status == 2 and "refusing to send an API key over plain http to example.com" in err
