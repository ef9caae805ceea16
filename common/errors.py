"""The one exception type for problems with the user's input (files, keys, values).

The CLI prints its message as a single line and exits with code 2; anything else is a bug.
"""


class UserError(Exception):
    """Bad input: the message names the offending field or file and what is expected."""
