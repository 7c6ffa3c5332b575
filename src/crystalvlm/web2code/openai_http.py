"""Chat completions from any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, LM Studio, ...)
through the `openai` client, with the API key kept to the endpoint it was given for.

The key goes only where the user sent it:

* it comes from `ChatEndpoint.api_key` or from the environment variable the user named with the
  endpoint (`api_key_env`, the command line's `--llm-key-env`), never from the client's own
  defaults: `openai.OpenAI()` would otherwise read `OPENAI_API_KEY` (and `OPENAI_ADMIN_KEY`,
  `OPENAI_ORG_ID`, `OPENAI_PROJECT_ID`, `OPENAI_CUSTOM_HEADERS`) and send them to any base URL;
* it is refused over plain http except to a loopback address (where nobody can listen in);
* redirects are not followed (the client's default would replay the request, Authorization
  header included, to wherever the endpoint points); a redirect is an error naming its target;
* a request hook on the HTTP client checks every request just before it is sent: same scheme,
  host and port as the endpoint, and only ordinary transport headers, the client's own
  `x-stainless-*` ones, and our Authorization.
  That holds whatever a future `openai` release adds from the environment.

Errors name the endpoint, the HTTP status and the start of the server's answer. Retries (network
errors, 429 and 5xx answers) are ours rather than the client's, so `retry_wait_s` means what it says.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


class EndpointError(RuntimeError):
    """The endpoint could not be reached or answered something unusable."""


# Headers a chat request may carry besides Authorization: what HTTP itself needs, and the client's
# own "x-stainless-*" bookkeeping (it reads some back, e.g. to return the raw response). Everything
# else (headers it took from the environment, such as OpenAI-Organization) is dropped.
_ALLOWED_HEADERS = frozenset({"host", "accept", "accept-encoding", "connection", "content-length",
                              "content-type", "user-agent"})
_CLIENT_HEADER_PREFIX = "x-stainless-"


def is_loopback_host(host: str | None) -> bool:
    """True for "localhost" and loopback IP addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ChatEndpoint:
    base_url: str  # e.g. "http://127.0.0.1:8000/v1" or "https://api.openai.com/v1"
    model: str
    # The key, given explicitly; None: the variable named by api_key_env, or no key at all.
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None  # name of the environment variable that holds the key
    timeout_s: float = 120.0
    retries: int = 2  # extra attempts after a network error or a 429/5xx answer
    retry_wait_s: float = 2.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"ChatEndpoint.base_url must start with http:// or https:// and name a host, "
                             f"got {self.base_url!r}")
        if parts.username or parts.password:
            raise ValueError(f"ChatEndpoint.base_url must not carry credentials ({parts.hostname}); "
                             "give the key with api_key / --llm-key-env")
        if not self.model:
            raise ValueError("ChatEndpoint.model must name the model to ask")
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("ChatEndpoint: give the key either as api_key or as api_key_env, not both")
        if self.api_key_env is not None and not self.api_key_env:
            raise ValueError("ChatEndpoint.api_key_env must name an environment variable")
        if self.resolved_key() and parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError(f"refusing to send an API key over plain http to {parts.hostname}: anyone on the way "
                             f"could read it; use https:// (or a loopback address for a local server)")

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def resolved_key(self) -> str:
        """The key to send ("" for none): api_key, else the named variable, never anything else."""
        if self.api_key is not None:
            return self.api_key
        if self.api_key_env is not None:
            return os.environ.get(self.api_key_env, "")
        return ""


def _client(endpoint: ChatEndpoint):
    """An `openai.OpenAI` for this endpoint alone (see the module docstring)."""
    try:
        import openai
    except ImportError:
        raise EndpointError("talking to an LLM endpoint needs the openai package: pip install openai") from None
    key = endpoint.resolved_key()
    base = urlsplit(endpoint.base_url)
    origin = (base.scheme, base.hostname, base.port or (443 if base.scheme == "https" else 80))

    def guard(request) -> None:
        url = request.url
        if (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80)) != origin:
            raise EndpointError(f"refusing a request to {url} that is not the endpoint {endpoint.base_url}")
        for name in list(request.headers.keys()):
            if name.lower() not in _ALLOWED_HEADERS and not name.lower().startswith(_CLIENT_HEADER_PREFIX):
                del request.headers[name]
        if key:
            request.headers["Authorization"] = f"Bearer {key}"

    omit = openai.Omit()
    http_client = openai.DefaultHttpxClient(follow_redirects=False, timeout=endpoint.timeout_s,
                                            event_hooks={"request": [guard]})
    # Every credential the client would otherwise look up in the environment is given (or
    # omitted) explicitly. Without a key the client still wants one: it gets a placeholder, which
    # `guard` removes from the request together with anything else that is not ours.
    return openai.OpenAI(
        base_url=endpoint.base_url, api_key=key or "no-key", admin_api_key="",
        max_retries=0, timeout=endpoint.timeout_s, http_client=http_client,
        default_headers={"OpenAI-Organization": omit, "OpenAI-Project": omit})


def chat_completion(endpoint: ChatEndpoint, messages: list[dict], *, max_tokens: int = 1024,
                    temperature: float = 0.7, seed: int | None = None) -> str:
    """The assistant's reply text for `messages` (OpenAI message dicts; content may be a list of
    text / image_url parts for vision models)."""
    import openai

    extra = {} if seed is None else {"seed": seed}
    last_error = ""
    with _client(endpoint) as client:
        for attempt in range(endpoint.retries + 1):
            if attempt:
                time.sleep(endpoint.retry_wait_s * attempt)
            try:
                # The raw answer, parsed here: a server that answers 200 with something other than
                # a chat completion gets an error that quotes it.
                response = client.chat.completions.with_raw_response.create(
                    model=endpoint.model, messages=messages, max_tokens=max_tokens, temperature=temperature,
                    **extra)
            except openai.APIStatusError as error:
                status = error.status_code
                if 300 <= status < 400:
                    target = error.response.headers.get("location", "?")
                    raise EndpointError(f"{endpoint.url} answered a redirect (HTTP {status} to {target}); it is not "
                                        "followed, so the API key goes nowhere else: give the final URL as the "
                                        "endpoint") from None
                last_error = f"HTTP {status} from {endpoint.url}: {error.response.text[:300]}"
                if status == 429 or status >= 500:
                    continue
                raise EndpointError(last_error) from None
            except openai.APIConnectionError as error:  # also timeouts
                cause = error.__cause__ or error
                if isinstance(cause, EndpointError):  # refused by the guard
                    raise cause from None
                last_error = f"could not reach {endpoint.url}: {cause}"
                continue
            return _reply_text(endpoint, response.text)
    raise EndpointError(f"{last_error} (gave up after {endpoint.retries + 1} attempts)")


def _reply_text(endpoint: ChatEndpoint, answer: str) -> str:
    try:
        data = json.loads(answer)
        content = data["choices"][0]["message"]["content"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise EndpointError(f"{endpoint.url} answered something that is not a chat completion: {answer[:300]!r}") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise EndpointError(f"{endpoint.url} returned no text content: {answer[:300]!r}")
    return content
