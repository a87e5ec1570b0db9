"""What the unit tests share.

- Every unit test starts with no GPU table: the hub's tables (`gpu_broker.broker_for`) live
  for the process, and a table one test filled must not decide another's assignments.
- ``server_port``: a single-user server stand-in that answers ``/user/<name>/api`` as
  jupyterhub-singleuser does, for the spawner's hooks against the fake engine.
"""

import pytest
from tornado import web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from hardened_spawner import gpu_broker


@pytest.fixture(autouse=True)
def no_gpu_tables():
    gpu_broker.reset()
    yield
    gpu_broker.reset()


class Answer(web.RequestHandler):
    def get(self, *args):
        self.write({"version": "fake"})


@pytest.fixture
async def server_port():
    sockets = bind_sockets(0, "127.0.0.1")
    http = HTTPServer(web.Application([(r"/.*", Answer)]))
    http.add_sockets(sockets)
    yield sockets[0].getsockname()[1]
    http.stop()
