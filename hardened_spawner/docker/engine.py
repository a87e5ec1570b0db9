"""Engine work the hub does for all of its users, as plain async functions over a `HubContext`.

They know nothing of traitlets or of one user's spawner: the spawner turns its
settings into arguments for them.
"""

from __future__ import annotations

import docker.errors

from .. import labels
from .hub_context import EngineFacts, HubContext
from .isolation import docker_network
from .workspace import IDENTITY_VOLUME


async def image_for_start(ask, image: str, pull_policy: str, pull) -> dict:
    """The image's ``inspect`` (``ask`` calls the engine), pulled first as ``pull_policy``
    says (``pull``: DockerSpawner's ``pull_image``): an image that is there costs one
    ``inspect``, not two."""
    if pull_policy.lower() != "always":
        try:
            return await ask("inspect_image", image)
        except docker.errors.NotFound:
            pass
    await pull(image)  # 'never' raises the image's NotFound here
    return await ask("inspect_image", image)


async def ensure_volume(context: HubContext, name: str, volume_labels: dict) -> tuple[dict, bool]:
    """The volume (made, with its labels, if missing) and whether it was just made."""
    try:
        return await context.docker("inspect_volume", name), False
    except docker.errors.NotFound:
        return await context.docker("create_volume", name=name, labels=volume_labels), True


async def ensure_network(context: HubContext, name: str, bridge: str, isolation: bool, log) -> None:
    """The users' network, made if missing the way `docker_network.ensure_network` makes it for
    every part of this project (no traffic between containers with isolation, room for a
    hub's fixed address)."""
    found = await context.docker("networks", names=[name])
    if not [n for n in found if n["Name"] == name]:
        client = context.client
        facts = await context.run(docker_network.ensure_network, client, name, bridge, isolation)
        log.info("Made the users' network %s (bridge %s, subnet %s)", facts.name, facts.bridge,
                 ", ".join(facts.subnets))


async def gather_engine_facts(context: HubContext, network: str, bridge: str, isolation: bool,
                              log) -> EngineFacts:
    """AppArmor support, the identity volume's host path and the engine's CPUs; makes the
    identity volume and the users' network if they are missing."""
    info = await context.docker("info")
    identity, _ = await ensure_volume(
        context, IDENTITY_VOLUME, {labels.MANAGED: "true", labels.ROLE: labels.ROLE_IDENTITY}
    )
    await ensure_network(context, network, bridge, isolation, log)
    return EngineFacts(
        apparmor=any("apparmor" in o for o in info.get("SecurityOptions") or []),
        identity_mountpoint=identity["Mountpoint"],
        cpus=info.get("NCPU") or 0,
    )


def orphans(containers: list[dict], hub_id: str, known: set[tuple[str, str]]) -> list[dict]:
    """Running servers this hub's database started and no longer knows of.

    A hub killed in the middle of a spawn can leave its container running, with GPUs,
    while the database never recorded the server. Only servers labelled with this hub's
    database count: other hubs' servers on the same engine are theirs.
    """
    found = []
    for container in containers:
        container_labels = container.get("Labels") or {}
        if not hub_id or container_labels.get(labels.HUB) != hub_id:
            continue
        key = (container_labels.get(labels.OWNER, ""), container_labels.get(labels.SERVER_NAME, ""))
        if key not in known:
            found.append(container)
    return found


async def running_servers(context: HubContext, hub_id: str, known_servers, audit, log) -> list[dict]:
    """The running managed servers, after removing this hub's orphans (see `orphans`).

    ``known_servers`` returns the (user, server name) pairs the hub's database has as
    running or starting, or None when there is no database to ask (then nothing is removed).
    """
    running = await context.docker("containers", filters=labels.MANAGED_SERVERS)
    known = known_servers()
    if known is None:
        return running
    removed = []
    for container in orphans(running, hub_id, known):
        container_labels = container.get("Labels") or {}
        name = (container.get("Names") or ["?"])[0].lstrip("/")
        log.warning(
            "Removing server container %s of %s: the hub's database does not know it (a hub "
            "that stopped in the middle of its spawn left it running); GPUs %s are free again",
            name, container_labels.get(labels.OWNER), container_labels.get(labels.GPUS) or "none",
        )
        try:
            await context.docker("remove_container", container["Id"], force=True)
        except docker.errors.NotFound:
            pass
        audit.emit(
            "orphan-removed",
            user=container_labels.get(labels.OWNER, ""),
            server_name=container_labels.get(labels.SERVER_NAME, ""),
            uid=_int(container_labels.get(labels.UID)),
            gid=_int(container_labels.get(labels.GID)),
            devices=[d for d in container_labels.get(labels.GPUS, "").split(",") if d],
            container_id=container["Id"],
            container_name=name,
            reason="not in the hub's database",
        )
        removed.append(container["Id"])
    return [c for c in running if c["Id"] not in removed]


def _int(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


async def run_helper(context: HubContext, create: dict, host: dict, hub_id: str) -> tuple[int, str]:
    """Run the workspace helper container to its end: (exit status, output). Always removed;
    labelled with this hub and process, so that if the process is killed first, the hub's next
    start removes it (`remove_abandoned_helpers`)."""
    host_config = context.client.create_host_config(**host)
    create = {**create, "labels": {**create.get("labels", {}), labels.HUB: hub_id,
                                   labels.HUB_PROCESS: context.process_id}}
    helper = await context.docker("create_container", host_config=host_config, **create)
    try:
        await context.docker("start", helper["Id"])
        result = await context.docker("wait", helper["Id"], timeout=120)
        output = (await context.docker("logs", helper["Id"])).decode(errors="replace")
    finally:
        await context.docker("remove_container", helper["Id"], force=True)
    return result["StatusCode"], output


async def remove_abandoned_helpers(context: HubContext, hub_id: str) -> None:
    """Remove helper containers of this hub that another process of it ran: a hub killed
    between creating a helper and removing it leaves one behind, holding the workspace
    volume (``docker volume rm`` then fails). Other hubs' helpers, and this process's own
    (in flight for another spawn), are never touched."""
    if not hub_id:
        return
    found = await context.docker("containers", all=True, filters={
        "label": [f"{labels.ROLE}={labels.ROLE_HELPER}", f"{labels.HUB}={hub_id}"]})
    for helper in found:
        if (helper.get("Labels") or {}).get(labels.HUB_PROCESS) == context.process_id:
            continue
        try:
            await context.docker("remove_container", helper["Id"], force=True)
        except docker.errors.NotFound:
            pass
