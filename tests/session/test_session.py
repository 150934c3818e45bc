"""The session API against fake guests: a plain ``sh`` on pipes, and the fake VMM
(real HostConsole + Serial16550 in front of ``sh``) on pipes and on a pty."""

import os
import re
import signal
import sys
from pathlib import Path

import pytest

from pyvmm.guest.session import CommandResult, GuestSession, SessionClosed, SessionError, SessionTimeout

FAKE_VMM = [sys.executable, str(Path(__file__).with_name("fake_vmm.py"))]
# The inner sh is the "guest shell"; the fake reboot ends it and the outer sh exits 0.
SH_GUEST = ["sh", "-c", "echo booting; echo pyvmm-init: session-ready; sh; exit 0"]


@pytest.fixture
def guest_env(tmp_path):
    """PATH with a fake ``reboot`` (never run the host's) that ends the guest shell."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    reboot = bin_dir / "reboot"
    reboot.write_text("#!/bin/sh\nkill -TERM $PPID\n")
    reboot.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


@pytest.fixture(params=["sh-pipes", "fake-vmm-pipes", "fake-vmm-pty"])
def session(request, guest_env):
    argv = SH_GUEST if request.param == "sh-pipes" else FAKE_VMM
    s = GuestSession.start(argv, timeout=30, env=guest_env, use_pty=request.param.endswith("pty"))
    yield s
    s.close(timeout=10)


def test_output_and_status(session):
    assert session.run("echo hello", timeout=10) == CommandResult("hello\n", 0)
    assert session.run("false", timeout=10).status == 1
    assert session.run("sh -c 'exit 7'", timeout=10).status == 7
    assert session.run("printf abc", timeout=10) == CommandResult("abc", 0)
    assert session.run("true", timeout=10) == CommandResult("", 0)
    assert session.run("printf 'a\\n\\nb\\n'", timeout=10).output == "a\n\nb\n"
    assert session.run("ls /nonexistent-dir 2>&1", timeout=10).status != 0


def test_state_persists_and_multiline(session):
    session.run("cd /tmp; X=42", timeout=10)
    assert session.run("pwd; echo $X", timeout=10).output == "/tmp\n42\n"
    assert session.run("for i in 1 2 3; do\necho $i\ndone", timeout=10).output == "1\n2\n3\n"


def test_stdin_cannot_swallow_the_marker(session):
    assert session.run("cat", timeout=10) == CommandResult("", 0)


def test_crlf_normalised(session):
    assert session.run("printf 'a\\r\\nb\\r\\n'", timeout=10).output == "a\nb\n"


def test_long_output_and_long_command(session):
    r = session.run("i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); done", timeout=30)
    assert r.output.splitlines() == [f"line-{i}" for i in range(300)]
    word = "y" * 2000  # far more than the UART FIFO: host-side flow control
    assert session.run(f"echo {word} | wc -c", timeout=30).output.strip() == "2001"


def test_lines_recorded_with_time(session):
    session.run("echo recorded-line", timeout=10)
    texts = [text for _, text in session.lines]
    assert "pyvmm-init: session-ready" in texts
    assert "recorded-line" in texts
    times = [t for t, _ in session.lines]
    assert times == sorted(times) and times[0] >= 0
    assert not any("\r" in text for text in texts)


def test_wait_for_partial_line_and_since(session):
    session.send("printf 'login: '\n")
    assert session.wait_for(r"login: $", timeout=10, partial=True).group(0) == "login: "
    with pytest.raises(SessionTimeout):
        session.wait_for(r"login: $", timeout=0.2)  # not a complete line yet
    since = len(session.lines)
    session.send("echo\necho second-time\n")
    match = session.wait_for(r"second-(\w+)", timeout=10, since=since)
    assert match.group(1) == "time"


def test_command_timeout_reports_recent_output(guest_env):
    s = GuestSession.start(SH_GUEST, timeout=30, env=guest_env)
    try:
        with pytest.raises(SessionTimeout) as e:
            s.run("echo before-the-hang; sleep 30", timeout=1)
        assert "before-the-hang" in str(e.value)
        assert "timed out after 1 s" in str(e.value)
    finally:
        # The guest is still in sleep: the reboot is not read, so close must kill.
        assert s.close(timeout=1) == -signal.SIGTERM


def test_ready_timeout_stops_the_vmm():
    with pytest.raises(SessionTimeout) as e:
        GuestSession.start(["sh", "-c", "echo still-booting; exec sleep 30"], timeout=1)
    assert "still-booting" in str(e.value)
    assert "ready line" in str(e.value)


def test_vmm_dying_before_ready_is_reported():
    with pytest.raises(SessionClosed) as e:
        GuestSession.start(["sh", "-c", "echo kernel-panic; echo 'pyvmm: error: no kvm' >&2; exit 3"], timeout=30)
    message = str(e.value)
    assert "kernel-panic" in message
    assert "pyvmm: error: no kvm" in message or "exit status: 3" in message


def test_vmm_dying_during_command(guest_env):
    s = GuestSession.start(SH_GUEST, timeout=30, env=guest_env)
    try:
        with pytest.raises(SessionClosed):
            s.run("kill -KILL $$", timeout=10)
    finally:
        s.close(timeout=5)


def test_close_reboots_cleanly(guest_env):
    s = GuestSession.start(SH_GUEST, timeout=30, env=guest_env)
    assert s.close(timeout=10) == 0
    assert s.returncode == 0
    assert s.close() == 0  # idempotent
    with pytest.raises(SessionClosed):
        s.send("echo too late\n")


def test_context_manager_and_check(guest_env):
    with GuestSession.start(FAKE_VMM, timeout=30, env=guest_env) as s:
        assert s.check("echo ok", timeout=10) == "ok\n"
        with pytest.raises(SessionError, match="status 2"):
            s.check("exit_code() { return 2; }; exit_code", timeout=10)
    assert s.returncode == 0
    assert any(re.search("Restarting system", text) for _, text in s.lines)


def test_ctrl_a_x_over_pty_quits_the_vmm(guest_env):
    s = GuestSession.start(FAKE_VMM, timeout=30, env=guest_env, use_pty=True)
    try:
        s.send(b"\x01x")
        assert s.process.wait(10) == 0
    finally:
        s.close(timeout=5)


def test_shell_setup_sent_once_or_not_at_all():
    echo_guest = ["sh", "-c", "echo pyvmm-init: session-ready; exec cat"]
    with GuestSession.start(echo_guest, timeout=30) as s:
        s.send("first\n")
        s.wait_for("^first$", timeout=10)
        assert [text for _, text in s.lines][1:] == ["PS1=''; PS2=''", "first"]
    with GuestSession.start(echo_guest, timeout=30, shell_setup=None) as s:
        s.send("first\n")
        s.wait_for("^first$", timeout=10)
        assert [text for _, text in s.lines][1:] == ["first"]
