"""``pyvmm monitor PATH [COMMAND...]``: one-shot commands, the line loop on stdin, one-line errors."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pyvmm.cli import main
from pyvmm.monitor import Monitor, MonitoredDevice, MonitorServer


class Device:
    def monitor_commands(self):
        return {"ctl": lambda args: "set " + ",".join(args)}


class Transport:
    def request_reset(self, reason):
        pass


@pytest.fixture
def socket_path(tmp_path):
    quits = []
    monitor = Monitor([MonitoredDevice("snd0", Device(), Transport())], lambda fn, *a, timeout=None: fn(*a),
                      lambda: {"IO": 2}, quit=lambda: quits.append(1))
    path = tmp_path / "mon.sock"
    server = MonitorServer(monitor, path).start()
    yield str(path)
    server.close()


def test_one_shot_command(socket_path):
    result = CliRunner().invoke(main, ["monitor", socket_path, "info", "stats"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "VM exits: 2"


def test_negative_values_are_arguments_not_options(socket_path):
    result = CliRunner().invoke(main, ["monitor", socket_path, "snd0", "ctl", "0", "-10"])
    assert result.exit_code == 0, result.output
    assert result.output == "set 0,-10\n"


def test_failed_command_is_a_one_line_error(socket_path):
    result = CliRunner().invoke(main, ["monitor", socket_path, "nope"])
    assert result.exit_code == 2
    assert result.stderr == "pyvmm: error: unknown command 'nope' (try 'help')\n"


def test_line_loop_reads_stdin_until_eof(socket_path):
    result = CliRunner().invoke(main, ["monitor", socket_path], input="info stats\nbad\n\nsnd0 ctl 1\n")
    assert result.exit_code == 0
    assert "VM exits: 2" in result.stdout and "set 1" in result.stdout
    assert "error: unknown command 'bad'" in result.stderr


def test_missing_socket(tmp_path):
    result = CliRunner().invoke(main, ["monitor", str(tmp_path / "none.sock"), "help"])
    assert result.exit_code == 2 and result.stderr.startswith("pyvmm: error: cannot connect to monitor")
