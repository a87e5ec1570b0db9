"""What goes wrong with the users' network isolation, said for an admin."""


class NetworkConfigError(ValueError):
    """A setting for the users' network or its firewall is wrong; names the setting."""


class FirewallError(RuntimeError):
    """The rules could not be read or written; the message says why and what to do."""
