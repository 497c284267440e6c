"""The one exception type the command line turns into a one-line message and exit code 2."""


class ConvzooError(Exception):
    """A problem with the user's input (path, key, value) that has a clear one-line explanation.

    The CLI catches it, prints ``convzoo: error: <message>`` and exits with status 2.
    Raise it with a message that names the file, key or value at fault.
    """
