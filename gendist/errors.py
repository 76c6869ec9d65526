class UserError(Exception):
    """Bad user input: the CLI prints the one-line message and exits with code 2."""
