"""A fake Kubernetes API server over HTTP, for a real hub process with HardenedKubeSpawner.

There is no API server on the test machine. A hub that runs ``hardened-kube`` loads a
kubeconfig (kubespawner's ``load_config``: in-cluster, else ``KUBECONFIG``) and asks the API
what a hub start and the GPU board ask: the namespace's pods (by label selector; the start
audit and the GPU table), and, once a spawner polls or starts, a list and a watch of pods and
events for kubespawner's reflectors. This answers exactly that, from pods a test gives it,
and 404 (a Kubernetes ``Status``) for anything else. Every request is logged, so a test can
tell what the hub asked.

Not a cluster: nothing is created, nothing is enforced, and a watch sees no events (it stays
open for a while, as the API server's does until ``timeoutSeconds``, then ends cleanly).

`KubeHub` is `hubdriver.Hub` with ``hardened-kube`` and this API: a real ``python -m jupyterhub
-f`` process on free ports, pointed at the API by ``KUBECONFIG``; a test gives the spawner's
settings (or a whole chart's config) as its ``extra_config``.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from hubdriver import Hub

#: most seconds a watch stays open (the API server keeps it until ``timeoutSeconds``)
WATCH_SECONDS = 5.0


@dataclass(frozen=True)
class Request:
    """One request the fake API answered: its method, path, query and the status given."""

    method: str
    path: str
    query: dict[str, str]
    status: int

    @property
    def watch(self) -> bool:
        return self.query.get("watch", "").lower() in ("true", "1")


def matches(labels: dict, selector: str) -> bool:
    """Whether ``labels`` match an equality-based label selector (``a=b,c!=d,e,!f``)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class FakeKubeApi:
    """The fake API on 127.0.0.1 (a free port), in threads of this process."""

    pods: list[dict] = field(default_factory=list)
    watch_seconds: float = WATCH_SECONDS
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeKubeApi:
        api = self

        class Handler(_Handler):
            fake = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="fake-kube-api", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends the open watches
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeKubeApi:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose one context is this API, over plain HTTP, with no credentials."""
        path.write_text(json.dumps({  # JSON is YAML
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "hub", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "hub", "namespace": namespace}}],
            "current-context": "fake",
        }, indent=2))
        return path

    def seen(self, path: str, **query: str) -> list[Request]:
        """The requests made to ``path`` whose query has (at least) ``query``."""
        with self._lock:
            return [r for r in self.requests
                    if r.path == path and all(r.query.get(k) == v for k, v in query.items())]

    def wait_seen(self, path: str, timeout: float = 15, **query: str) -> list[Request]:
        """`seen`, once there is such a request (the hub asks some in the background)."""
        deadline = time.monotonic() + timeout
        while not self.seen(path, **query) and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.seen(path, **query)

    def log(self) -> str:
        with self._lock:
            return "\n".join(f"{r.status} {r.method} {r.path} {r.query}" for r in self.requests) or "(no requests)"

    def _note(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubeApi
    protocol_version = "HTTP/1.0"  # one request per connection: a watch ends when it closes

    def log_message(self, format, *args):  # the fake's own record is `FakeKubeApi.requests`
        pass

    def _answer(self, status: int, body: dict, query: dict) -> None:
        self.fake._note(Request(self.command, urlsplit(self.path).path, query, status))
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        # /api/v1/namespaces/NS/KIND or /api/v1/KIND (all namespaces)
        if parts[:2] == ["api", "v1"] and len(parts) in (3, 5) and (len(parts) == 3 or parts[2] == "namespaces"):
            namespace, kind = (parts[3], parts[4]) if len(parts) == 5 else (None, parts[2])
            if kind in ("pods", "events"):
                return self._list(kind, namespace, query)
        if url.path == "/version":
            return self._answer(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake"}, query)
        self._answer(404, _status(404, "NotFound", f"the fake API does not serve {url.path}"), query)

    def do_POST(self):
        self._refuse()

    do_PUT = do_PATCH = do_DELETE = do_POST

    def _refuse(self):
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self._answer(404, _status(404, "NotFound", f"the fake API does not serve {self.command} {url.path}"), query)

    def _list(self, kind: str, namespace: str | None, query: dict) -> None:
        items = self.fake.pods if kind == "pods" else []
        items = [item for item in items
                 if (namespace is None or item["metadata"].get("namespace") == namespace)
                 and matches(item["metadata"].get("labels") or {}, query.get("labelSelector", ""))]
        if query.get("watch", "").lower() in ("true", "1"):
            return self._watch(query)
        list_kind = "PodList" if kind == "pods" else "EventList"
        self._answer(200, {"kind": list_kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                           "items": items}, query)

    def _watch(self, query: dict) -> None:
        """No events: the stream stays open until ``timeoutSeconds`` (at most the fake's
        ``watch_seconds``), then ends, which the client reads as the watch's timeout."""
        self.fake._note(Request(self.command, urlsplit(self.path).path, query, 200))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()  # no length: the body ends when the connection closes
        self.wfile.flush()
        timeout = min(float(query.get("timeoutSeconds") or self.fake.watch_seconds), self.fake.watch_seconds)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.fake._stopping.wait(0.1):
            pass


@dataclass
class KubeHub(Hub):
    """A hub process with ``hardened-kube`` against ``kube_api``: `Hub`'s ports, database, proxy
    and tester token, none of its Docker settings. ``extra_config`` is the spawner's part;
    the tester's service and role are added after it, so a config that sets
    ``JupyterHub.services`` (as the chart's does) keeps them."""

    kube_api: FakeKubeApi | None = None

    def config_text(self) -> str:
        head = self.process_config("hardened-kube", "127.0.0.1")
        tail = textwrap.dedent(
            f"""
            # --- the test's own, after the spawner's config -----------------------------
            # a service that calls the hub on the chart's hub port (8081) gets this hub's
            _services = c.JupyterHub.services  # a list once set, else a value to append to
            for _service in (_services if isinstance(_services, list) else []):
                if "command" in _service:
                    _service["command"] = [_arg.replace("//localhost:8081/", "//127.0.0.1:{self.hub_port}/")
                                           for _arg in _service["command"]]
            c.JupyterHub.services.append({{"name": "tester", "api_token": "{self.token}"}})
            c.JupyterHub.load_roles.append({{
                "name": "tester",
                "scopes": ["admin:users", "admin:servers", "tokens", "read:metrics"],
                "services": ["tester"],
            }})
            """
        )
        return head + textwrap.dedent(self.extra_config) + tail

    def start(self, wait: bool = True) -> KubeHub:
        assert self.kube_api is not None, "KubeHub(kube_api=FakeKubeApi().start(), ...)"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**self.env, "KUBECONFIG": str(self.kube_api.write_kubeconfig(self.workdir / "kubeconfig"))}
        super().start(wait)
        return self
