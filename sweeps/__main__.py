"""`python -m sweeps COMMAND ...`: commands about sweeps (running one is `python sweeps/run.py`).

    python -m sweeps status NAME [--storage-path P] [--tracking-uri U]
"""

import sys

from lora_train.errors import UserError, cli_main

COMMANDS = {"status": "sweeps.status"}


@cli_main
def main(argv=None) -> int:
    import importlib

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        raise UserError(f"python -m sweeps: expected a command ({', '.join(COMMANDS)}), got {' '.join(argv[:1]) or 'none'}")
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
