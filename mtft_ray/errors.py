"""The one exception type that means "the user's input is wrong".

The CLI turns a :class:`MtftError` into a single line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback.
"""


class MtftError(Exception):
    """Bad input, missing data or an impossible request, with a message that says what and where."""
