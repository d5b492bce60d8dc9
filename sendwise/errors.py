"""The root error every room raises for its users: the one place the ground floor shares."""


class SendwiseError(Exception):
    """An error whose message is meant for the user as it is: one line, no traceback."""
