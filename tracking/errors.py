"""Errors a user can cause in `tracking` (bad URI, bad CLI value, missing experiment).

`tracking` must not import `lora_train`, so it has its own error type with the same rule: the
message is ONE line that names the culprit, and every CLI exits 2 on it.
"""

import argparse
import functools
import sys


class TrackingError(Exception):
    """A tracking mistake the user can fix; the message is one line naming the culprit."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def cli_main(main):
    """Decorate a CLI entry point: `TrackingError` → `error: <message>` on stderr, exit code 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except TrackingError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose usage errors are one line (`error: <prog>: ...`), exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message}\n")
