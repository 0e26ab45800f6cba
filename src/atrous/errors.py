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


class ModelError(AtrousError, ValueError):
    """A model that cannot be built as asked (`atrous.models.build`). Also a `ValueError`, so that code
    which catches the bad-argument `ValueError` of the modules keeps working; callers need not re-wrap it."""


class UnknownModel(ModelError):
    """`build(name)` with a name that is not registered; the message lists the valid names."""


class BadModelOption(ModelError):
    """An option name the model's builder does not take, or a value it rejects; the message names the
    model, the option and what is valid."""
