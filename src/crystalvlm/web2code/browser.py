"""Finding and launching Chromium, and the policy it runs under: its sandbox, its network walls,
and a hard kill for a browser that stops answering.

Sandbox. Chromium's own sandbox confines each renderer (the process that parses a hostile page)
so a renderer exploit cannot reach the user's files. Playwright turns it off unless asked
(`chromium_sandbox=True`), so this module asks whenever the OS allows it, and says why not where
it does not:

* as root, Chromium refuses to start with its sandbox (it exits "Running as root without
  --no-sandbox is not supported"): containers that run as root get no sandbox; run as an
  ordinary user to have one;
* Debian's Chromium sandboxes through unprivileged user namespaces (it ships no setuid
  `chrome-sandbox` helper); where the kernel turns them off (`kernel.unprivileged_userns_clone=0`,
  `user.max_user_namespaces=0`) and no setuid helper exists, there is no sandbox;
* anything else that stops it (an AppArmor or seccomp policy of a container, for one) shows only
  when Chromium starts: the launch is tried with the sandbox, and on failure tried again without.

`RenderSettings.sandbox` chooses: "auto" (the default: on where possible, otherwise off with one
logged warning naming why), "on" (refuse to render without it) or "off". Each pool records what it
got (`RenderPool.sandboxed`, `sandbox_reason`) and so does every `RenderResult` (`sandboxed`).

Network walls behind request interception (see `isolation`): no DNS, a proxy on a closed local
port for anything that is not intercepted (pre-connects), and WebRTC without UDP that bypasses the
proxy (a STUN request would otherwise leave by UDP; seen in testing with a local canary).

Hard kill. Every launch carries a switch of its own (`--crystalvlm-render-id=<random>`; Chromium
ignores switches it does not know) so that a browser that stopped answering, even one whose launch
never finished, can be found among the processes and killed. Playwright's `close()` needs the
browser's cooperation, which a wedged browser does not give.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
INSTALL_HINT = (
    "install Chromium and Playwright: `apt-get install -y chromium fonts-dejavu-core fonts-liberation` "
    "and `pip install playwright` (or set CRYSTALVLM_CHROMIUM to a Chromium binary)"
)
ISOLATION_ARGS = ("--host-resolver-rules=MAP * ~NOTFOUND", "--disable-dev-shm-usage", "--no-pings",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-domain-reliability", "--dns-prefetch-disable",
                  "--webrtc-ip-handling-policy=disable_non_proxied_udp", "--force-webrtc-ip-handling-policy")
DEAD_PROXY_SERVER = "http://127.0.0.1:9"  # the discard port: nothing listens, connections fail at once
MARKER_SWITCH = "--crystalvlm-render-id="
SANDBOX_MODES = ("auto", "on", "off")
CLOSE_GRACE_S = 5.0  # a healthy browser closes within this; a wedged one is killed after it

_warned: set[str] = set()  # sandbox warnings already logged by this process (one per reason)


class BrowserUnavailable(RuntimeError):
    """Chromium or Playwright is missing, or Chromium does not start; the message says why."""


def find_chromium(explicit: str | None = None) -> str:
    """The Chromium binary to launch: `explicit`, $CRYSTALVLM_CHROMIUM, Debian's path or PATH."""
    for candidate in (explicit, os.environ.get("CRYSTALVLM_CHROMIUM")):
        if candidate:
            if not Path(candidate).is_file():
                raise BrowserUnavailable(f"Chromium binary {candidate!r} does not exist; {INSTALL_HINT}")
            return candidate
    for candidate in CHROMIUM_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserUnavailable(f"no Chromium found; {INSTALL_HINT}")


def browser_available() -> bool:
    """True when both Playwright and a Chromium binary are installed (tests skip otherwise)."""
    try:
        import playwright  # noqa: F401

        find_chromium()
        return True
    except (ImportError, BrowserUnavailable):
        return False


# ----------------------------------------------------------------------------- sandbox
@dataclass(frozen=True)
class SandboxDecision:
    enabled: bool  # ask Chromium for its sandbox
    reason: str  # why not (empty when enabled)


def _read_knob(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _setuid_helper(executable: str | None) -> Path | None:
    """Chromium's setuid sandbox helper, when one is installed (root-owned, setuid)."""
    candidates = [os.environ.get("CHROME_DEVEL_SANDBOX")]
    if executable:
        real = Path(executable).resolve()
        candidates += [str(real.parent / "chrome-sandbox"), str(real.parent / "chrome_sandbox")]
    candidates.append("/usr/lib/chromium/chrome-sandbox")
    for candidate in filter(None, candidates):
        try:
            info = os.stat(candidate)
        except OSError:
            continue
        if info.st_uid == 0 and info.st_mode & stat.S_ISUID:
            return Path(candidate)
    return None


def sandbox_decision(mode: str = "auto", executable: str | None = None, *, euid: int | None = None,
                     proc: Path = Path("/proc")) -> SandboxDecision:
    """Whether to launch Chromium with its sandbox, from what can be known before launching
    (see the module docstring). "on" raises `BrowserUnavailable` where the sandbox cannot work."""
    if mode not in SANDBOX_MODES:
        raise ValueError(f"sandbox must be one of {', '.join(SANDBOX_MODES)}, got {mode!r}")
    if mode == "off":
        return SandboxDecision(False, "the sandbox was turned off (RenderSettings.sandbox='off')")
    euid = os.geteuid() if euid is None else euid
    reason = ""
    if euid == 0:
        reason = ("running as root: Chromium refuses to start its sandbox for root, so pages render without it "
                  "(run as an ordinary user to have it)")
    elif _setuid_helper(executable) is None:
        if _read_knob(proc / "sys/kernel/unprivileged_userns_clone") == "0":
            reason = ("unprivileged user namespaces are turned off (kernel.unprivileged_userns_clone=0) and no "
                      "setuid chrome-sandbox is installed")
        elif _read_knob(proc / "sys/user/max_user_namespaces") == "0":
            reason = "user namespaces are turned off (user.max_user_namespaces=0) and no setuid chrome-sandbox is installed"
    if not reason:
        return SandboxDecision(True, "")
    if mode == "on":
        raise BrowserUnavailable(f"RenderSettings.sandbox='on', but Chromium's sandbox cannot work here: {reason}")
    return SandboxDecision(False, reason)


def warn_without_sandbox(reason: str) -> None:
    """Log once per process and reason that pages render without Chromium's sandbox."""
    if reason in _warned:
        return
    _warned.add(reason)
    log.warning("Chromium runs WITHOUT its sandbox: %s. A page that exploits a bug in the renderer would run "
                "with this process's rights; render only pages you trust, or fix the cause.", reason)


# ----------------------------------------------------------------------------- launch and kill
@dataclass
class LaunchedBrowser:
    browser: object  # playwright.async_api.Browser
    sandboxed: bool
    sandbox_reason: str  # why it is off ("" when on)
    marker: str  # the value of MARKER_SWITCH on its command line


def browser_processes(marker: str) -> list[int]:
    """Ids of the processes whose command line carries `marker` (Linux /proc; elsewhere none)."""
    needle = (MARKER_SWITCH + marker).encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "cmdline").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return found


def kill_browser_processes(marker: str) -> int:
    """SIGKILL the browser launched with `marker` (its renderers and helpers exit with it)."""
    killed = 0
    for pid in browser_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    return killed


async def launch_chromium(playwright, executable: str, *, sandbox: str, fallback_proxy: str,
                          timeout_s: float) -> LaunchedBrowser:
    """Start Chromium under the isolation policy, with its sandbox where possible, within
    `timeout_s` (a launch that runs over is killed and reported as `BrowserUnavailable`)."""
    decision = sandbox_decision(sandbox, executable)
    if decision.enabled:
        marker = uuid.uuid4().hex
        try:
            browser = await _launch_once(playwright, executable, True, fallback_proxy, timeout_s, marker)
            return LaunchedBrowser(browser, True, "", marker)
        except BrowserUnavailable:
            raise  # it did not start in time: no second try would do better
        except Exception as error:  # the OS refused the sandbox only at start-up (AppArmor, seccomp ...)
            reason = f"Chromium could not start its sandbox ({first_line(error)})"
            if sandbox == "on":
                raise BrowserUnavailable(f"RenderSettings.sandbox='on', but {reason}") from None
            decision = SandboxDecision(False, reason)
    warn_without_sandbox(decision.reason)
    marker = uuid.uuid4().hex
    browser = await _launch_once(playwright, executable, False, fallback_proxy, timeout_s, marker)
    return LaunchedBrowser(browser, False, decision.reason, marker)


async def _launch_once(playwright, executable: str, sandboxed: bool, fallback_proxy: str, timeout_s: float,
                       marker: str):
    launching = playwright.chromium.launch(
        executable_path=executable, args=[*ISOLATION_ARGS, MARKER_SWITCH + marker], headless=True,
        chromium_sandbox=sandboxed,
        # "<-loopback>" removes the implicit proxy bypass for 127.0.0.1, so even local servers
        # are only reachable through the (dead) proxy.
        proxy={"server": fallback_proxy, "bypass": "<-loopback>"})
    try:
        return await asyncio.wait_for(launching, timeout_s)
    except asyncio.TimeoutError:
        kill_browser_processes(marker)
        raise BrowserUnavailable(f"Chromium did not start within {timeout_s:g} s (RenderSettings.launch_timeout_s); "
                                 "the half-started browser was killed") from None
    except BaseException:
        kill_browser_processes(marker)  # a failed start must not leave a process behind
        raise


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
