"""Errors the operator commands raise for main() to turn into a message and an exit code."""


class Refused(Exception):
    """A command cannot do what was asked; the message says why and what to do (exit 1)."""
