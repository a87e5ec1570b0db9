"""hardened-spawner-ssh (the SSH ProxyCommand) without a network: arguments, where the token
comes from, what each refusal says, the two pumps over fakes, and that the file stands alone."""

import ast
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import websocket

from hardened_spawner import ssh_proxy
from hardened_spawner.ssh_proxy import ProxyError, explain_status, parse_args, read_token

URL = "wss://hub.example.org/user/alice/sshd/"


def test_arguments():
    args = parse_args(["--token-file", "~/.jupyterhub-token", URL])
    assert (args.url, args.token_file, args.connect_timeout) == (URL, "~/.jupyterhub-token", 30)
    assert parse_args(["ws://127.0.0.1:8000/user/alice/sshd/"]).token_file is None


@pytest.mark.parametrize("argv", [
    ["https://hub.example.org/user/alice/sshd/"],  # not a websocket URL
    ["wss:///user/alice/sshd/"],  # no host
    [],
    ["--token", "secret", URL],  # no token on the command line, not even as an abbreviation
    ["--token-file"],
])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert "usage: hardened-spawner-ssh" in capsys.readouterr().err


def test_the_token_from_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".jupyterhub-token").write_text("\n  0123abcd  \r\nignored\n")
    env = {"JUPYTERHUB_API_TOKEN": "from-env"}
    assert read_token("~/.jupyterhub-token", env) == "0123abcd"  # the file wins, ~ expanded, trimmed


def test_the_token_from_the_environment():
    assert read_token(None, {"JUPYTERHUB_API_TOKEN": " t0ken\n"}) == "t0ken"


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read the token file"),
    ("", "is empty"),
    ("\n \n", "is empty"),
    ("two words\n", "spaces or control characters"),
])
def test_a_bad_token_file_is_explained(tmp_path, content, message):
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ProxyError, match=message):
        read_token(str(path), {"JUPYTERHUB_API_TOKEN": "not used"})


def test_no_token_at_all_is_explained():
    with pytest.raises(ProxyError, match="--token-file PATH, or set JUPYTERHUB_API_TOKEN"):
        read_token(None, {})
    with pytest.raises(ProxyError, match="no token"):
        read_token(None, {"JUPYTERHUB_API_TOKEN": "  "})


def test_main_reports_a_missing_token_on_stderr(monkeypatch, capsys):
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN", raising=False)
    assert ssh_proxy.main([URL]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("hardened-spawner-ssh: no token")


def test_main_sends_the_token_as_a_header(monkeypatch):
    seen = {}

    class Refused(websocket.WebSocket):
        def connect(self, url, **options):
            seen.update(options, url=url)
            raise websocket.WebSocketBadStatusException("refused", 403)

    monkeypatch.setattr(websocket, "WebSocket", Refused)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "s3cret")
    with pytest.raises(ProxyError, match=r"refused \(403\)"):
        ssh_proxy.connect(URL, "s3cret", 7)
    assert seen["header"] == ["Authorization: token s3cret"]
    assert seen["url"] == URL and seen["timeout"] == 7 and seen["redirect_limit"] == 0


@pytest.mark.parametrize(("status", "location", "says"), [
    (401, None, "wrong, expired or revoked. Make a new one at https://hub.example.org/hub/token"),
    (403, None, "lacks the scope access:servers!user=NAME"),
    (404, None, "SSH is not enabled in its image"),
    (503, None, "your server is not running: start it at https://hub.example.org/hub/home"),
    (302, "/hub/user/alice/sshd/", "your server is not running"),
    (302, "/user/alice/sshd", "SSH is not enabled in its image"),
    (302, "/hub/login?next=%2Fuser%2Falice%2Fsshd%2F", "the token was not accepted"),
    (200, None, "not a websocket"),
    (418, None, "answered 418"),
])
def test_each_refusal_is_explained(status, location, says):
    assert says in explain_status(status, URL, location)


def test_a_hub_under_a_prefix():
    url = "ws://example.org:8000/jhub/user/alice/sshd/"
    assert "not running" in explain_status(302, url, "/jhub/hub/user/alice/sshd/")
    assert "http://example.org:8000/jhub/hub/token" in explain_status(401, url)
    assert "http://example.org:8000/jhub/hub/home" in explain_status(503, url)
    assert "not accepted" in explain_status(302, url, "/jhub/hub/login")


class FakeSocket:
    def __init__(self):
        self.shut = False

    def shutdown(self, how):
        self.shut = True

    def close(self):
        pass


class FakeWebSocket:
    """What the pumps use of websocket-client's WebSocket."""

    def __init__(self, frames=(), answer_close=True):
        self.frames = list(frames)
        self.sent: list[tuple[bytes, int]] = []
        self.closes = 0
        self.sock = FakeSocket()
        self.answer_close = answer_close

    def recv_data(self):
        if self.frames:
            return self.frames.pop(0)
        raise websocket.WebSocketConnectionClosedException("gone")

    def send(self, data, opcode):
        self.sent.append((data, opcode))

    def send_close(self):
        self.closes += 1
        if self.answer_close:
            self.frames.append((websocket.ABNF.OPCODE_CLOSE, b"\x03\xe8"))


def test_downstream_writes_every_message_until_the_close():
    binary, close = websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_CLOSE
    ws = FakeWebSocket([(binary, b"SSH-2.0-"), (binary, b""), (binary, b"x" * 300_000), (close, b""),
                        (binary, b"after the close")])
    read, write = os.pipe()
    got = bytearray()
    reader = threading.Thread(target=lambda: got.extend(b"".join(iter_read(read))))
    reader.start()
    ssh_proxy._downstream(ws, write)
    os.close(write)
    reader.join(10)
    os.close(read)
    assert bytes(got) == b"SSH-2.0-" + b"x" * 300_000


def test_downstream_ends_when_the_connection_drops():
    ws = FakeWebSocket([(websocket.ABNF.OPCODE_BINARY, b"abc")])
    read, write = os.pipe()
    ssh_proxy._downstream(ws, write)  # the fake raises WebSocketConnectionClosedException next
    os.close(write)
    assert b"".join(iter_read(read)) == b"abc"
    os.close(read)


def test_downstream_closes_the_websocket_when_ssh_is_gone():
    ws = FakeWebSocket([(websocket.ABNF.OPCODE_BINARY, b"abc")], answer_close=False)
    read, write = os.pipe()
    os.close(read)
    ssh_proxy._downstream(ws, write)  # BrokenPipeError (Python ignores SIGPIPE)
    os.close(write)
    assert ws.closes == 1


def test_upstream_sends_stdin_as_binary_then_closes():
    ws = FakeWebSocket()
    read, write = os.pipe()
    os.write(write, b"SSH-2.0-OpenSSH\r\n")
    os.close(write)
    done = threading.Event()
    ssh_proxy._upstream(ws, read, done)
    os.close(read)
    assert ws.sent == [(b"SSH-2.0-OpenSSH\r\n", websocket.ABNF.OPCODE_BINARY)]
    assert ws.closes == 1


def test_upstream_stops_reading_when_the_server_never_answers_the_close(monkeypatch):
    monkeypatch.setattr(ssh_proxy, "CLOSE_WAIT", 0.05)
    ws = FakeWebSocket(answer_close=False)
    read, write = os.pipe()
    os.close(write)
    ssh_proxy._upstream(ws, read, threading.Event())
    os.close(read)
    assert ws.closes == 1 and ws.sock.shut


def iter_read(fd):
    while chunk := os.read(fd, 1 << 16):
        yield chunk


def test_the_file_stands_alone(tmp_path):
    """Copied to a laptop with only websocket-client installed, it runs: no import from the package."""
    source = Path(ssh_proxy.__file__)
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a relative import"
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"websocket"}, imported
    copy = tmp_path / "ssh_proxy.py"
    copy.write_text(source.read_text())
    done = subprocess.run([sys.executable, "-I", str(copy), "--help"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and "--token-file PATH" in done.stdout, done.stderr
