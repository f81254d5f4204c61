"""The one exception type for problems the user can fix (bad input, missing files, ...).

The CLI prints its message as a single line and exits non-zero; anything else is a bug and
keeps its traceback.
"""


class NanoGPTError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""

    exit_code = 2
