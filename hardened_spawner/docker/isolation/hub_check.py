"""Is the users' network isolated as this hub needs, and may a spawn go ahead?

The hub checks at its start and before spawns; a good check is reused for
`firewall_check_interval` seconds (per users' network and policy, in the `HubContext`),
a refusal never: the rules may be back by the next spawn (after a reboot the engine
restarts the hub and the compose firewall keeper at the same time).
"""

from __future__ import annotations

import asyncio

from ...errors import SpawnRefused
from ..hub_context import ENGINE_ERRORS, HubContext, IsolationCheck
from . import verify
from .docker_network import network_facts
from .policy import IsolationPolicy, apply_command


async def current_check(context: HubContext, network: str, policy: IsolationPolicy | None, why: str, *,
                        method: str, image: str, interval: float, required: bool, log,
                        force: bool = False) -> IsolationCheck:
    """The last check of ``network`` against ``policy`` if it may be reused, else a new one
    (``policy`` None: it could not be built, ``why``)."""
    async with context.isolation_lock:
        now = asyncio.get_running_loop().time()
        key = (network, policy.summary() if policy else "")
        cached = context.isolation.get(key)
        refusing = bool(cached and (cached.blocking or (cached.problems and required)))
        if cached and not force and not refusing and now - cached.when < interval:
            return cached
        if policy is None:
            check = IsolationCheck(now, "none", (f"the isolation could not be checked: {why}",))
        else:
            check = await _check(context, network, policy, now, method, image)
        context.isolation[key] = check
        _log(log, network, check, cached)
        return check


async def _check(context: HubContext, network: str, policy: IsolationPolicy, now: float,
                 method: str, image: str) -> IsolationCheck:
    try:
        facts = network_facts(await context.docker("inspect_network", network))
    except ENGINE_ERRORS as e:
        return IsolationCheck(now, "none", (f"the isolation could not be checked: {e}",))
    client = context.client
    verdict = await context.run(lambda: verify.check(client, facts, policy, method=method, image=image))
    problems = list(verdict.problems)
    if problems:
        problems.append("Fix: as root on the Docker host, run: " + apply_command(network, policy))
    return IsolationCheck(now, verdict.method, tuple(problems), tuple(verdict.blocking))


def _log(log, network: str, check: IsolationCheck, before: IsolationCheck | None) -> None:
    if check.problems:
        log.warning(
            "NETWORK ISOLATION IS NOT IN PLACE for the users' network %s (checked by %s): "
            "users' servers may reach each other, the cloud metadata service, private "
            "networks or the host.\n  - %s",
            network, check.method, "\n  - ".join(check.problems),
        )
    elif not before or before.problems:
        log.info("Network isolation of %s is in place (checked by %s)", network, check.method)


def refusal(check: IsolationCheck, required: bool, name: str) -> SpawnRefused | None:
    """Why a spawn may not go ahead, or None. Rules that keep servers from this hub's API
    always refuse (such a server could never finish starting); other missing isolation
    refuses only with `firewall_required`."""
    if check.blocking:
        fix = [p for p in check.problems if p.startswith("Fix: ")]
        return SpawnRefused(
            "Your server was not started: the network rules in place on this server stop "
            "servers from reaching this hub, so it could never finish starting. The hub admin "
            f"must update them ({(fix or ['see the hub log'])[0]}).",
            reason="network",
            status_code=424,
            log_message=f"Refused {name}: the isolation rules block this hub's API: "
            + "; ".join(check.blocking + check.problems),
        )
    if check.problems and required:
        return SpawnRefused(
            "Your server was not started: the network isolation this hub requires is not in "
            "place. The hub admin can find the details in the hub log.",
            reason="network",
            status_code=424,
            log_message=f"Refused {name}: network isolation missing: " + "; ".join(check.problems),
        )
    return None
