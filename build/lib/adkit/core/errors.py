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


def raise_if_bad(messages, shown=5):
    """One UserError line for the files that failed a check (``messages``, one string each):
    a single message as it is, else "N bad files: m1; m2; ...; and K more" naming the first
    ``shown``. Nothing happens when ``messages`` is empty."""
    if not messages:
        return
    more = f"; and {len(messages) - shown} more" if len(messages) > shown else ""
    prefix = "" if len(messages) == 1 else f"{len(messages)} bad files: "
    raise UserError(prefix + "; ".join(messages[:shown]) + more)
