"""Keeping users' servers apart, and away from what they must not reach.

Two layers, one module a concern:

- `docker_network`: the users' network itself (plain Docker options, no root): a bridge
  with a fixed interface name and ``enable_icc=false``.
- `policy`: what the rules must allow and block, built from a validated spawner.
- `rules`: the literal iptables rules for a network and a policy, and how installed
  tables differ from them (pure).
- `iptables`: runs the commands on the host (its runner injected), for ``firewall``.
- `marker`, `probe`: what a hub that cannot read iptables checks instead.
- `verify`: the one check the hub and ``hardened-spawner check`` run.
- `resolv`: which of the host's DNS resolvers the rules would cut servers off from.
- `command`: ``hardened-spawner firewall apply|status|remove|network|resolvers``.
"""
