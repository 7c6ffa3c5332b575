"""Fetching `http(s)` image URLs for the server, when its operator allows it (`--allow-remote-images`).

A client chooses the URL, so the fetch is the server reaching out on the client's behalf (SSRF).
The rules, in the order they apply:

* the URL must be `http` or `https` with a host name and no user name or password in it;
* the host name is resolved once, and every address it resolves to must be public: loopback,
  private, link-local (cloud metadata services), carrier-grade NAT, multicast, reserved and
  unspecified addresses are refused, as are IPv6 forms that embed such an IPv4 address. The
  operator may allow extra networks (`remote_image_networks`, e.g. an intranet image store);
* the connection goes to the address that was checked (pinned), with the URL's name in the `Host`
  header and, for https, in the TLS server name and the certificate check, so a DNS answer that
  changes between check and use (DNS rebinding) cannot redirect it;
* redirects are not followed, and only a `200` answer is used;
* one deadline covers everything a request fetches, name resolution included, and the bytes read
  stop at the image size limit;
* no proxy settings or credentials from the environment are used.

Every failure after the URL's text has been checked, from a refused address to a timeout, gives the
client the same message, so the server cannot be used to learn which hosts and ports answer (the
reason goes to the server log).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpx

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.ip_network("64:ff9b::/96")
MAX_URL_CHARACTERS = 4096


class RemoteImageError(Exception):
    """A remote image that was not fetched. `public` is what the client is told; `reason` is for the log."""

    def __init__(self, public: str, reason: str = "") -> None:
        super().__init__(public)
        self.public = public
        self.reason = reason or public


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    deadline_s: float  # for all the images of one request, resolution included
    allowed_networks: tuple[str, ...] = ()  # operator's exceptions to the public-address rule

    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(network, strict=False) for network in self.allowed_networks]


def check_url(url: str) -> None:
    """Refuse, with a specific reason, what the URL's text alone shows to be unusable (no network)."""
    if len(url) > MAX_URL_CHARACTERS:
        raise RemoteImageError(f"the image URL has {len(url)} characters; at most {MAX_URL_CHARACTERS} are accepted")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as error:
        raise RemoteImageError(f"the image URL is malformed ({error})") from None
    if parts.scheme not in ("http", "https"):
        raise RemoteImageError("the image URL must start with http:// or https://")
    if not parts.hostname:
        raise RemoteImageError("the image URL has no host name")
    if parts.username is not None or parts.password is not None:
        raise RemoteImageError("the image URL may not carry a user name or password")


def is_public(address: Address) -> bool:
    """Whether `address` is one anyone on the internet reaches (not this host's or a private network's)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
        if address.teredo is not None:
            return False  # a tunnel to a host the address does not show
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_loopback
                                      or address.is_link_local or address.is_private or address.is_unspecified)


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (a test replaces this to stand in for DNS)."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def permitted_address(host: str, addresses: Iterable[str], policy: FetchPolicy) -> Address:
    """The address to connect to: the first one, once every one is permitted."""
    networks = policy.networks()
    checked = []
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is dropped
        if not (is_public(address) or any(address in network for network in networks)):
            raise RemoteImageError(GENERIC, f"{host} resolves to {address}, which is not a public address")
        checked.append(address)
    if not checked:
        raise RemoteImageError(GENERIC, f"{host} resolves to no address")
    return checked[0]


GENERIC = "the image could not be fetched from its URL"


async def fetch(url: str, policy: FetchPolicy, client: httpx.AsyncClient) -> bytes:
    """The bytes at `url` under the rules above (call inside the request's deadline)."""
    check_url(url)
    parts = urlsplit(url)
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await anyio.to_thread.run_sync(resolve_addresses, host, port, abandon_on_cancel=True)
    except (OSError, UnicodeError, ValueError) as error:  # UnicodeError: a name IDNA cannot encode
        raise RemoteImageError(GENERIC, f"{host} does not resolve ({error})") from None
    address = permitted_address(host, addresses, policy)
    try:
        pinned = httpx.URL(url).copy_with(host=str(address))
    except httpx.InvalidURL as error:
        raise RemoteImageError(f"the image URL is malformed ({error})") from None
    headers = {"Host": parts.netloc.rpartition("@")[2], "Accept": "image/*",
               "Accept-Encoding": "identity", "User-Agent": "crystalvlm-image-fetch"}
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    try:
        async with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
            if response.status_code != 200:
                raise RemoteImageError(GENERIC, f"{url} answered HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > policy.max_bytes:
                raise RemoteImageError(GENERIC, f"{url} declares {declared} bytes, over {policy.max_bytes}")
            chunks, size = [], 0
            async for chunk in response.aiter_raw():  # as sent: no decompression to inflate past the cap
                size += len(chunk)
                if size > policy.max_bytes:
                    raise RemoteImageError(GENERIC, f"{url} sent more than {policy.max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as error:
        raise RemoteImageError(GENERIC, f"{url} ({address}): {type(error).__name__}: {error}") from None


def new_client(policy: FetchPolicy) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        follow_redirects=False,
        trust_env=False,  # no proxy from the environment (it would connect by name, unpinned), no .netrc
        timeout=httpx.Timeout(policy.deadline_s),  # each step; the request's deadline bounds them all
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=0),
    )
