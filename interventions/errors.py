"""One exception type for bad input, so every entry point can print a single clear line and exit non-zero."""


class EmsteerError(ValueError):
    """Bad input or a missing prerequisite, worded for the user (one line, names the problem)."""
