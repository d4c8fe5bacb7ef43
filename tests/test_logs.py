"""Logs: readable text on a terminal, JSON lines otherwise (`logging.format`), never a key."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from meshgate import logs
from meshgate.config import SAMPLE_CONFIG, ConfigError, load_config
from meshgate.launcher import Stack
from tests.conftest import ROOT, subprocess_env

SECRET = "sk-mg-0123456789abcdefghijklmnopqrstuv"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _record(msg: str = "listening", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("meshgate.test", logging.INFO, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


@pytest.mark.parametrize(
    ("configured", "terminal", "chosen"),
    [
        ("auto", True, "text"),
        ("auto", False, "json"),
        ("text", False, "text"),
        ("json", True, "json"),
    ],
)
def test_the_format_is_text_on_a_terminal_and_json_otherwise_unless_configured(
    configured: logs.LogFormat, terminal: bool, chosen: str
) -> None:
    stream = _Terminal() if terminal else io.StringIO()
    assert logs.resolve_format(configured, stream) == chosen
    formatter = logs.formatter("edge", configured, stream)
    assert isinstance(formatter, logs.TextFormatter if chosen == "text" else logs.JsonFormatter)


def test_a_closed_stream_means_json() -> None:
    stream = io.StringIO()
    stream.close()
    assert logs.resolve_format("auto", stream) == "json"


def test_logging_format_is_config_with_an_env_override() -> None:
    assert load_config(SAMPLE_CONFIG, environ={}).logging.format == "auto"
    env = {"MESHGATE_LOGGING__FORMAT": "json"}
    assert load_config(SAMPLE_CONFIG, environ=env).logging.format == "json"
    with pytest.raises(ConfigError, match=r"logging\.format"):
        load_config(SAMPLE_CONFIG, environ={"MESHGATE_LOGGING__FORMAT": "xml"})


def test_a_json_line_has_the_fields_and_the_request_id() -> None:
    token = logs.request_id.set("req-123")
    try:
        line = logs.JsonFormatter("quota").format(_record(address="127.0.0.1:1", status=200))
    finally:
        logs.request_id.reset(token)
    entry = json.loads(line)
    assert entry["service"] == "quota" and entry["level"] == "info" and entry["msg"] == "listening"
    assert entry["request_id"] == "req-123" and entry["status"] == 200
    assert entry["ts"].endswith("Z")


def test_a_text_line_is_one_readable_line() -> None:
    line = logs.TextFormatter("router").format(
        _record("replica ejected", target="10.0.0.5:50055", reason="two words")
    )
    assert "\n" not in line and not line.startswith("{")
    assert " INFO  router " in line and "replica ejected" in line
    assert "target=10.0.0.5:50055" in line and 'reason="two words"' in line


@pytest.mark.parametrize("formatter", [logs.JsonFormatter("auth"), logs.TextFormatter("auth")])
def test_no_formatter_writes_a_key(formatter: logging.Formatter) -> None:
    lines = [
        formatter.format(_record(f"rejected key {SECRET}")),
        formatter.format(_record("call", authorization=f"Bearer {SECRET}")),
        formatter.format(_record("call", header=f"Bearer {SECRET}", api_key=SECRET)),
        formatter.format(_record("upstream said: Bearer abc.def-ghi")),
    ]
    for line in lines:
        assert SECRET not in line and SECRET[6:20] not in line
        assert "abc.def-ghi" not in line
    assert "key_ab12" in formatter.format(_record("revoked", key_id="key_ab12"))


_PROGRAM = """
import logging
from meshgate import logs
logs.configure("edge", "INFO", "auto")
logging.getLogger("meshgate.edge").info("listening", extra={"address": "127.0.0.1:8080"})
"""


def _run(stderr: int) -> None:
    subprocess.run(
        [sys.executable, "-c", _PROGRAM],
        cwd=ROOT,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        timeout=60,
        check=True,
    )


def test_auto_writes_text_to_a_terminal_and_json_to_a_pipe(tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    try:
        _run(follower)
        os.close(follower)
        follower = -1
        on_terminal = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed, all is read
                break
            if not chunk:
                break
            on_terminal += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = on_terminal.decode().strip()
    assert "listening" in text and "address=127.0.0.1:8080" in text
    assert not text.startswith("{")

    captured = tmp_path / "stderr"
    with captured.open("wb") as file:
        _run(file.fileno())
    entry = json.loads(captured.read_text().strip())
    assert entry["msg"] == "listening" and entry["address"] == "127.0.0.1:8080"


def test_meshgate_up_hands_its_own_terminal_answer_to_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_config(SAMPLE_CONFIG, environ={})
    stack = Stack(SAMPLE_CONFIG, config, env={})
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert stack._child_env()["MESHGATE_LOGGING__FORMAT"] == "text"
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert stack._child_env()["MESHGATE_LOGGING__FORMAT"] == "json"
    env = {"MESHGATE_LOGGING__FORMAT": "text"}  # an explicit choice reaches children as it is
    explicit = Stack(SAMPLE_CONFIG, load_config(SAMPLE_CONFIG, environ=env), env=env)
    assert explicit._child_env()["MESHGATE_LOGGING__FORMAT"] == "text"
