"""The one exception type that reaches users."""


class NdvqError(Exception):
    """An error caused by user input (a file, a model, an option), with a message fit for a terminal."""
