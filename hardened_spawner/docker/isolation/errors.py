"""What goes wrong with the rules on the host, said for an admin."""


class FirewallError(RuntimeError):
    """The rules could not be read or written; the message says why and what to do."""
