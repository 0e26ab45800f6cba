"""User-facing errors.

`AtrousError` is raised for every problem the user can fix (a bad file, key, value or option). The CLI
prints its message as one line and exits with status 2; anything else is a bug and keeps its traceback.
Messages name the file, key or value at fault and say what to do about it.
"""


class AtrousError(Exception):
    """A problem with the user's input, reported as one line that says how to fix it."""
