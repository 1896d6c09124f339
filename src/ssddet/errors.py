"""The errors the command line turns into one message and exit code 2: bad user input (dataset, config, command
line, checkpoint or weights file) and a training run that cannot go on."""


class UserError(ValueError):
    """Input the user can fix: the message names the file/ids/option and what is wrong (the CLI prints it and
    exits with code 2, no traceback)."""


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. a non-finite loss under nan_policy='stop')."""
