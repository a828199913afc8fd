"""The one exception type vitx raises for problems the caller can fix."""


class VitxError(ValueError):
    """Bad input or an unsupported combination, with a one-line message naming the problem."""
