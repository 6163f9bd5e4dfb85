"""Plain metavars in ``--help``: ``DIRECTORY`` and ``PATHS...``, not ``{directory}``,
``<bool>`` or ``<list[Path]>``.

typer 0.2x prints each option's Python type in angle brackets and wraps a required
argument's name in braces in the usage line. We set a metavar on every parameter of the
built click command instead: flags get none, other options a word for their value, and
arguments their upper-cased name, as click itself would print them.
"""

from __future__ import annotations

from typing import Any

# typer 0.2x builds on its own vendored copy of click, so parameters are told apart by
# their attributes (``opts`` starting with "-" for options), not by click's classes.


def _value_word(param: Any) -> str:
    desc = getattr(param, "type_descriptor", None)
    if desc is not None and getattr(desc, "is_path", False):
        return "PATH"
    try:
        name = param.bare_type().lower()
    except Exception:  # a parameter typer did not build: keep it generic
        return "TEXT"
    if "list[" in name:
        name = name.partition("[")[2].rstrip("]")
    return {"int": "N", "float": "X", "path": "PATH"}.get(name, "TEXT")


def _argument_usage(self: Any) -> str:
    name = (self.name or "arg").upper()
    if self.nargs != 1:
        return f"[{name}]..." if not self.required else f"{name}..."
    return name if self.required else f"[{name}]"


def tidy(command: Any) -> Any:
    """Set plain metavars on ``command`` and all its subcommands (returns it)."""
    for param in command.params:
        is_option = any(o.startswith("-") for o in getattr(param, "opts", ()))
        if is_option:
            if getattr(param, "is_flag", False) or getattr(param, "count", False):
                param.metavar = ""
            elif param.metavar is None:
                param.metavar = _value_word(param)
        elif param.metavar is None:
            param.metavar = param.name.upper() if param.name else "ARG"
            if param.nargs != 1:
                param.metavar += "..."
            # typer's usage line wraps required arguments in braces, and its argument table
            # repeats the Python type; click's plain style instead
            param._usage_display_name = _argument_usage.__get__(param)  # type: ignore[attr-defined]
            param.display_type_rich = lambda ctx: None  # type: ignore[attr-defined]
    make_help = command.get_help_option  # built per context, after we run

    def help_option(ctx: Any) -> Any:
        option = make_help(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        tidy(sub)
    return command
