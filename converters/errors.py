"""Errors a pass raises for input it cannot work with; the CLI prints them as one line."""


class ConversionError(Exception):
    """A model or config a pass cannot handle; the message says what is wrong and what to do."""
