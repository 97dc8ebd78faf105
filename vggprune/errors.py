"""The one exception type for mistakes a user can make (bad option, missing data, corrupt file)."""


class UserError(ValueError):
    """Raised for bad input; the CLI prints its message on one line and exits with code 2."""
