"""User-facing errors: one clear line instead of a traceback."""
import functools
import sys


class UserError(Exception):
    """A problem with the user's input (file, folder or option); printed as one line."""


def exit_on_user_error(main_fn):
    """Run ``main_fn`` and turn a UserError into ``error: ...`` on stderr with exit code 2."""

    @functools.wraps(main_fn)
    def wrapper(*args, **kwargs):
        try:
            return main_fn(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt as stop:  # training's says what it saved and how to go on
            print(str(stop) or "interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
