"""User-facing errors: one line that names the culprit, exit code 2 from every CLI."""

import argparse
import functools
import sys


class UserError(Exception):
    """A mistake the user can fix (bad file, bad config value, bad CLI flag).

    The message is a single line that names the culprit (path, config key or flag).
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def cli_main(main):
    """Decorate a CLI entry point: `UserError` → `error: <message>` on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors are one line (`error: <prog>: ...`), exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}\n")
