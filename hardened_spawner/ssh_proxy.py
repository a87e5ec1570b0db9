"""hardened-spawner-ssh: an SSH ``ProxyCommand`` that carries the connection over a websocket
to your own server's ``/user/NAME/sshd/`` (jupyter-sshd-proxy) through the hub's proxy.

    Host jupyterhub
        User NAME
        ProxyCommand hardened-spawner-ssh --token-file ~/.jupyterhub-token wss://HUB/user/NAME/sshd/

The hub token is read from ``--token-file PATH`` or from the environment variable
``JUPYTERHUB_API_TOKEN``, never from the command line (other users of the computer would see it
in ``ps``), and sent as ``Authorization: token ...``.

stdin goes to the server as binary websocket messages and the server's messages go to stdout,
one thread each way with blocking writes, so no byte waits for another event to be flushed
(websocat 1.13 sometimes does: a download stalls until the next SSH keep-alive). Pings are
answered; either side's close ends the other.

This file imports nothing from the rest of hardened_spawner: with only ``websocket-client``
installed (``pip install websocket-client``) it runs as ``python3 ssh_proxy.py ...`` on Linux,
macOS and Windows.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit

PROG = "hardened-spawner-ssh"
TOKEN_ENV = "JUPYTERHUB_API_TOKEN"
CHUNK = 1 << 16
#: how long to wait for the server's answer to our close before giving up on it
CLOSE_WAIT = 5.0


class ProxyError(Exception):
    """A failure to report on stderr, in words, before exiting with status 1."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        allow_abbrev=False,  # `--token SECRET` must not pass as --token-file (and land in an error message)
        description="An SSH ProxyCommand: stdin/stdout over a websocket to wss://HUB/user/NAME/sshd/, "
        "authenticated with a JupyterHub token.",
        epilog=f"The token comes from --token-file or ${TOKEN_ENV}; it is never given on the command line.",
    )
    parser.add_argument("url", help="wss://HUB/user/NAME/sshd/ (ws:// for a hub served over plain HTTP)")
    parser.add_argument("--token-file", metavar="PATH",
                        help=f"a file holding the hub token (default: the environment variable {TOKEN_ENV})")
    parser.add_argument("--connect-timeout", type=float, default=30, metavar="SECONDS",
                        help="give up opening the websocket after this long (default 30)")
    args = parser.parse_args(argv)
    parts = urlsplit(args.url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        parser.error(f"the URL must start with wss:// (or ws://) and name the hub: {args.url!r}")
    return args


def read_token(token_file: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """The hub token from the file (first non-empty line) or from $JUPYTERHUB_API_TOKEN."""
    if token_file:
        path = os.path.expanduser(token_file)
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.strip() for line in f]
        except OSError as e:
            raise ProxyError(f"cannot read the token file {path}: {e.strerror or e}") from None
        token = next((line for line in lines if line), "")
        if not token:
            raise ProxyError(f"the token file {path} is empty: put the token from https://HUB/hub/token in it")
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise ProxyError(f"no token: give --token-file PATH, or set {TOKEN_ENV} "
                             "(make a token at https://HUB/hub/token)")
    if any(c.isspace() or not c.isprintable() for c in token):
        raise ProxyError("the token has spaces or control characters in it: is it the right file?")
    return token


def explain_status(status: int, url: str, location: str | None = None) -> str:
    """What an HTTP answer to the websocket request means, for the person running ssh."""
    parts = urlsplit(url)
    # /BASE/user/NAME/sshd/: the hub's proxy sends it to /BASE/hub/user/NAME/sshd/ when NAME has no
    # server running; the user's server strips a trailing slash it has no handler for
    at = parts.path.find("/user/")
    base, rest = (parts.path[:at], parts.path[at:]) if at >= 0 else ("", parts.path)
    hub = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}{base}"
    moved_to = urlsplit(location).path if location else ""
    not_running = (f"your server is not running: start it at {hub}/hub/home and try again "
                   "(and check that the NAME in /user/NAME/sshd/ is yours)")
    no_sshd = (f"your server has nothing at {parts.path}: SSH is not enabled in its image (jupyter-sshd-proxy), "
               "or the URL is not /user/YOUR-NAME/sshd/")
    if status == 401:
        return f"the hub refused the token (401): it is wrong, expired or revoked. Make a new one at {hub}/hub/token"
    if status == 403:
        return ("the token was refused (403): it is wrong, expired or revoked, or it lacks the scope "
                "access:servers!user=NAME for the NAME in the URL (a token opens only its own user's servers). "
                f"Make a new one at {hub}/hub/token")
    if status == 404:
        return f"{no_sshd} (404)"
    if status in (424, 502, 503):
        return f"{not_running} ({status})"
    if 300 <= status < 400:
        if moved_to and moved_to == f"{base}/hub{rest}":
            return f"{not_running} ({status} to the hub)"
        if moved_to and moved_to.rstrip("/") == parts.path.rstrip("/"):
            return f"{no_sshd} ({status} to {moved_to})"
        return (f"the hub sent the request to a login page ({status}{' to ' + location if location else ''}): "
                f"the token was not accepted. Check it, or make a new one at {hub}/hub/token")
    if status == 200:
        return (f"{url} answered with a web page, not a websocket (200): the token was not accepted, "
                "or this is not an SSH address (/user/YOUR-NAME/sshd/)")
    return f"{url} answered {status} instead of opening a websocket"


def connect(url: str, token: str, timeout: float):
    """The open websocket, or a ProxyError saying why not."""
    import websocket  # websocket-client

    ws = websocket.WebSocket(enable_multithread=True, skip_utf8_validation=True)
    try:
        ws.connect(url, header=[f"Authorization: token {token}"], timeout=timeout, redirect_limit=0,
                   suppress_origin=True)
    except websocket.WebSocketBadStatusException as e:
        raise ProxyError(explain_status(e.status_code, url)) from None
    except websocket.WebSocketException as e:
        answer = getattr(ws, "handshake_response", None)
        if answer is not None and answer.status != 101:
            raise ProxyError(explain_status(answer.status, url, (answer.headers or {}).get("location"))) from None
        raise ProxyError(f"the websocket to {url} failed: {e}") from None
    except (OSError, ValueError) as e:
        raise ProxyError(f"cannot reach {urlsplit(url).netloc}: {e}") from None
    ws.settimeout(None)  # an SSH session may be quiet for hours
    return ws


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _upstream(ws, stdin_fd: int, downstream_done: threading.Event) -> None:
    """stdin -> the server, until ssh closes its side; then close the websocket."""
    import websocket

    try:
        while True:
            data = os.read(stdin_fd, CHUNK)
            if not data:
                break
            ws.send(data, websocket.ABNF.OPCODE_BINARY)
    except (OSError, websocket.WebSocketException):
        pass
    if downstream_done.is_set():
        return
    try:
        ws.send_close()
    except (OSError, websocket.WebSocketException):
        pass
    # the server answers our close with its own, which ends _downstream; if it does not, stop reading
    if not downstream_done.wait(CLOSE_WAIT):
        _shutdown(ws)


def _shutdown(ws) -> None:
    sock = getattr(ws, "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _downstream(ws, stdout_fd: int) -> None:
    """The server -> stdout, until the server closes (its close is answered by websocket-client,
    and so are its pings)."""
    import websocket

    try:
        while True:
            opcode, data = ws.recv_data()
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return
            if data:
                _write_all(stdout_fd, data)
    except BrokenPipeError:  # ssh went away: tell the server
        try:
            ws.send_close()
        except (OSError, websocket.WebSocketException):
            pass
    except (OSError, websocket.WebSocketException):
        return  # the connection ended: ssh sees stdout close


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        token = read_token(args.token_file)
        ws = connect(args.url, token, args.connect_timeout)
    except ProxyError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except ImportError:
        print(f"{PROG}: the websocket-client package is missing: pip install websocket-client", file=sys.stderr)
        return 1
    done = threading.Event()
    threading.Thread(target=_upstream, args=(ws, sys.stdin.fileno(), done), daemon=True,
                     name="stdin-to-websocket").start()
    try:
        _downstream(ws, sys.stdout.fileno())
    except KeyboardInterrupt:
        pass
    finally:
        done.set()
        _shutdown(ws)
        try:
            ws.sock and ws.sock.close()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
