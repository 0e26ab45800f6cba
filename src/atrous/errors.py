"""User-facing errors.

`AtrousError` is raised for every problem the user can fix (a bad file, key, value or option). The CLI
prints its message as one line and exits with status 2; anything else is a bug and keeps its traceback.
Messages name the file, key or value at fault and say what to do about it.
"""


class AtrousError(Exception):
    """A problem with the user's input, reported as one line that says how to fix it.

    A DataLoader worker re-raises an exception in the main process as `type(e)(text)` where the text holds
    the worker's whole traceback; that text is cut back to the original one-line message, so an error found
    inside a worker still reads as one line.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]  # "atrous.errors.AtrousError: <message>"
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)
