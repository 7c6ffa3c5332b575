"""Chromium's sandbox: on wherever the OS allows it, off with one warning naming why where it does
not, and recorded in the pool and in every result."""

from __future__ import annotations

import logging
import os

import pytest

from crystalvlm.web2code import browser
from crystalvlm.web2code.browser import BrowserUnavailable, sandbox_decision
from crystalvlm.web2code.render import RenderPool, RenderSettings, browser_available

needs_browser = pytest.mark.skipif(not browser_available(), reason="needs Playwright and Chromium")
PAGE = "<p>sandboxed?</p>"


def _proc(tmp_path, **knobs: str):
    """A stand-in for /proc with the given sysctl files (name: "kernel/unprivileged_userns_clone")."""
    for name, value in knobs.items():
        path = tmp_path / "sys" / name.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return tmp_path


@pytest.fixture()
def no_setuid_helper(monkeypatch, tmp_path):
    monkeypatch.delenv("CHROME_DEVEL_SANDBOX", raising=False)
    monkeypatch.setattr(browser, "_setuid_helper", lambda executable: None)


def test_root_gets_no_sandbox_and_is_told_why(tmp_path, no_setuid_helper):
    decision = sandbox_decision("auto", euid=0, proc=_proc(tmp_path))
    assert not decision.enabled and "running as root" in decision.reason
    with pytest.raises(BrowserUnavailable, match="sandbox='on'.*running as root"):
        sandbox_decision("on", euid=0, proc=_proc(tmp_path))


def test_an_ordinary_user_gets_the_sandbox_unless_user_namespaces_are_off(tmp_path, no_setuid_helper):
    assert sandbox_decision("auto", euid=1000, proc=_proc(tmp_path / "a")).enabled
    assert sandbox_decision("auto", euid=1000, proc=_proc(tmp_path / "b", **{"user/max_user_namespaces": "15000",
                                                                             "kernel/unprivileged_userns_clone": "1"})).enabled
    off = sandbox_decision("auto", euid=1000, proc=_proc(tmp_path / "c", **{"kernel/unprivileged_userns_clone": "0"}))
    assert not off.enabled and "kernel.unprivileged_userns_clone=0" in off.reason
    off = sandbox_decision("auto", euid=1000, proc=_proc(tmp_path / "d", **{"user/max_user_namespaces": "0"}))
    assert not off.enabled and "user.max_user_namespaces=0" in off.reason


def test_a_setuid_helper_stands_in_for_user_namespaces(tmp_path, monkeypatch):
    monkeypatch.setattr(browser, "_setuid_helper", lambda executable: tmp_path / "chrome-sandbox")
    assert sandbox_decision("auto", euid=1000, proc=_proc(tmp_path, **{"kernel/unprivileged_userns_clone": "0"})).enabled


def test_the_sandbox_can_be_turned_off_and_modes_are_checked(tmp_path):
    off = sandbox_decision("off", euid=1000, proc=_proc(tmp_path))
    assert not off.enabled and "turned off" in off.reason
    with pytest.raises(ValueError, match="sandbox must be one of auto, on, off"):
        sandbox_decision("maybe")
    with pytest.raises(ValueError, match="RenderSettings.sandbox"):
        RenderSettings(sandbox="maybe")


@pytest.mark.browser
@needs_browser
def test_a_pool_starts_here_and_records_whether_the_sandbox_is_on(monkeypatch, caplog):
    monkeypatch.setattr(browser, "_warned", set())
    expected = sandbox_decision("auto", browser.find_chromium())
    with caplog.at_level(logging.WARNING, logger="crystalvlm.web2code.browser"):
        with RenderPool(RenderSettings(viewport=(64, 64), workers=1)) as pool:
            [result] = pool.render([PAGE])
        with RenderPool(RenderSettings(viewport=(64, 64), workers=1)) as second:
            second.render([PAGE])
    assert result.ok, result.reason
    assert result.sandboxed is pool.sandboxed and result.summary()["sandboxed"] is pool.sandboxed
    if not expected.enabled:  # as root (these test machines) or without user namespaces
        assert pool.sandboxed is False and pool.sandbox_reason == expected.reason
    if pool.sandboxed:
        assert pool.sandbox_reason == "" and caplog.records == []
    else:
        warnings = [record.getMessage() for record in caplog.records]
        assert len(warnings) == 1, warnings  # one warning, not one per pool
        assert "WITHOUT its sandbox" in warnings[0] and pool.sandbox_reason in warnings[0]
    if os.geteuid() == 0:
        assert "running as root" in pool.sandbox_reason


@pytest.mark.browser
@needs_browser
def test_a_sandbox_that_fails_at_start_up_falls_back_with_the_reason(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs a place where Chromium refuses its sandbox at start-up (here: root)")
    # Pretend the static checks passed: Chromium itself then refuses the sandbox as root, and the
    # pool must still start, without it, saying why.
    monkeypatch.setattr(browser, "sandbox_decision", lambda mode, executable=None: browser.SandboxDecision(True, ""))
    monkeypatch.setattr(browser, "_warned", set())
    with RenderPool(RenderSettings(viewport=(64, 64), workers=1)) as pool:
        [result] = pool.render([PAGE])
    assert result.ok and result.sandboxed is False
    assert pool.sandbox_reason.startswith("Chromium could not start its sandbox (")


@pytest.mark.browser
@needs_browser
def test_sandbox_on_refuses_to_render_where_it_cannot_work():
    if os.geteuid() != 0:
        pytest.skip("this machine may well allow the sandbox")
    with pytest.raises(BrowserUnavailable, match="running as root"):
        RenderPool(RenderSettings(viewport=(64, 64), workers=1, sandbox="on"))


@pytest.mark.browser
@needs_browser
def test_the_render_command_passes_its_sandbox_choice(tmp_path, capsys):
    """`--sandbox on` reaches the pool: as root it is refused in one line, exit 2, nothing rendered."""
    from crystalvlm.cli import main

    if os.geteuid() != 0:
        pytest.skip("this machine may well allow the sandbox")
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    code = main(["web2code", "render", str(page), "--out", str(tmp_path / "out"), "--sandbox", "on", "--quiet"])
    assert code == 2
    assert "sandbox='on'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "page.png").exists()
    assert main(["web2code", "render", str(page), "--out", str(tmp_path / "out"), "--sandbox", "off", "--quiet"]) == 0
    assert (tmp_path / "out" / "page.png").is_file()
