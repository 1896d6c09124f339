"""The one error type for bad user input (dataset, config, command line, checkpoint or weights file)."""


class UserError(ValueError):
    """Input the user can fix: the message names the file/ids/option and what is wrong (the CLI prints it and
    exits with code 2, no traceback)."""
