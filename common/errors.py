"""The one exception type for problems with the user's input (files, keys, values).

The CLI prints its message as a single line and exits with code 2; anything else is a bug.
"""


class UserError(Exception):
    """Bad input: the message names the offending field or file and what is expected."""


def unknown_key(name: str, key: str, known) -> UserError:
    """The error for ``key`` (shown as ``name``) not among ``known``: a "did you mean" when one
    known key is close (difflib), else the list of them."""
    import difflib

    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of {sorted(known)}"
    return UserError(f"{name}: unknown key; {hint}")


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters), for a one-line record of
    an exception from Ray, a worker or a bucket."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]
