"""The one error type for bad user input: its message names the file/ids and what is wrong."""


class DataError(ValueError):
    """Invalid dataset or annotation input (the CLI prints the message and exits with code 2)."""
