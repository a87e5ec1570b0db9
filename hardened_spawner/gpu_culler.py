"""The GPU culler: a hub service that asks the hub to stop servers whose GPUs are due back.

``python -m hardened_spawner.gpu_culler --every=60``, started by the hub
(`gpu_pages.enable`). Every ``--every`` seconds it calls ``POST /hub/api/gpus/reclaim``;
the hub decides who is due (`gpu_board.due`, from its own GPU table and activity data) and
stops them through its own stop path, so the proxy route, the database and the audit
trail (``gpu-idle``, ``gpu-max-hold``) are kept as for any stop.

Why not jupyterhub-idle-culler: it has one timeout for every server (its issue #25, per
resource timeouts, is open), cannot tell a server holding GPUs from one that does not,
and cannot say why it stopped one. It still culls every server on its own longer timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Integer, Unicode
from traitlets.config import Application


class GpuCuller(Application):
    name = "hardened-spawner-gpu-culler"
    description = "Ask the hub to stop the servers whose GPUs are due back (idle or held too long)."

    every = Integer(60, help="Seconds between two rounds.").tag(config=True)
    api_url = Unicode(
        os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api"),
        help="The hub's REST API (the hub sets JUPYTERHUB_API_URL for its services).",
    ).tag(config=True)

    aliases = {"every": "GpuCuller.every", "url": "GpuCuller.api_url"}

    async def round(self, http: AsyncHTTPClient) -> dict:
        """One reclaim call; what the hub stopped and what it could not."""
        request = HTTPRequest(
            self.api_url.rstrip("/") + "/gpus/reclaim", method="POST", body=b"",
            headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"},
        )
        reply = await http.fetch(request)
        return json.loads(reply.body)

    async def run(self) -> None:
        http = AsyncHTTPClient()
        self.log.info("Reclaiming due GPUs every %s s through %s", self.every, self.api_url)
        while True:
            try:
                done = await self.round(http)
            except (HTTPClientError, OSError) as e:  # the hub restarting: try again next round
                self.log.warning("Reclaim call failed: %s", e)
            else:
                for entry in done["stopped"]:
                    self.log.info("Stopped %s/%s: %s", entry["user"], entry["server"], entry["reason"])
                for entry in done["failed"]:
                    self.log.warning("Could not stop %s/%s (%s): %s", entry["user"], entry["server"],
                                     entry["reason"], entry["error"])
            await asyncio.sleep(self.every)

    def start(self) -> None:
        # JupyterHub stops its services with SIGINT, then waits 30 s before SIGTERM; a hub
        # started with SIGINT ignored (in the background) would pass that on to us
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            asyncio.run(self.run())
        except KeyboardInterrupt:  # the hub stopping (Ctrl-C reaches its services too)
            pass


def main() -> None:
    GpuCuller.launch_instance()


if __name__ == "__main__":
    main()
