"""One exception type for every problem a user can fix (bad data, bad config, bad checkpoint)."""


class LmdiscError(ValueError):
    """A user-facing error: the message says what was wrong and what to do."""

    exit_code = 2
