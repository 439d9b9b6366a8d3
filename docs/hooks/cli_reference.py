"""mkdocs hook: the command-line reference, rendered at build time from the typer app itself.

A page holding the marker ``<!-- oirl-cli-reference -->`` gets, in its place, one section per ``oirl``
command: its docstring, its usage line and a table of its arguments and options (names, type, default,
help), all read from ``typer.main.get_command(oirl_fast.cli.app)``. Nothing of it is written by hand, so
the page cannot drift from ``oirl COMMAND --help``.
"""
from __future__ import annotations

import html
import inspect
import re

MARKER = "<!-- oirl-cli-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render_cli())


def render_cli() -> str:
    """Markdown for every command of the ``oirl`` app, in the order ``oirl --help`` lists them."""
    import typer

    from oirl_fast.cli import app

    group = typer.main.get_command(app)
    root = _context_class()(group, info_name="oirl")
    parts = [_text(group.help or "")]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        ctx = _context_class()(command, info_name=name, parent=root)
        parts.append(_command(command, ctx))
    return "\n\n".join(parts)


def _context_class():
    """typer's own copy of click's Context (typer >= 0.20 vendors click), else click's."""
    try:
        from typer._click.core import Context
    except ImportError:
        from click import Context
    return Context


def _is_argument(param) -> bool:
    return param.param_type_name == "argument"


def _command(command, ctx) -> str:
    params = [p for p in command.get_params(ctx) if p.name != "help" and not p.hidden]
    args = [p.name.upper() + ("..." if p.nargs == -1 else "") for p in params if _is_argument(p)]
    usage = " ".join(["oirl", ctx.info_name, "[OPTIONS]", *args])
    lines = [f"## `oirl {ctx.info_name}`", "", _text(command.help or ""), "", "```text", usage, "```", ""]
    rows = [_param_row(p, ctx) for p in params]
    if rows:
        lines += ["| argument or option | type | default | what |", "|---|---|---|---|", *rows]
    return "\n".join(lines)


def _param_row(param, ctx) -> str:
    if _is_argument(param):
        names = f"`{param.name.upper()}`" + (" (required)" if param.required else "")
        help_text = getattr(param, "help", None) or ""
    else:
        names = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        help_text = param.help or ""
        if param.required:
            names += " (required)"
    kind = "flag" if getattr(param, "is_flag", False) else _type_name(param, ctx)
    return f"| {names} | {kind} | {_default(param)} | {_cell(help_text)} |"


def _type_name(param, ctx) -> str:
    try:
        name = param.display_type(ctx)
    except TypeError:  # older typer: no context argument
        name = param.display_type()
    name = (name or "").strip("<>")
    name = re.sub(r"^list\[(\w+)\]$", lambda m: m.group(1).lower(), name)
    if param.multiple or param.nargs == -1:
        name += ", repeatable" if param.multiple else ", one or more"
    return _cell(name)


def _default(param) -> str:
    if getattr(param, "required", False):
        return ""
    default = param.default
    if getattr(param, "is_flag", False):  # an on/off pair shows the side that is on by default
        if default is True and param.secondary_opts:
            return f"`{param.opts[0]}`"
        return "" if default is False else f"`{default}`"
    if default is None or default == ():
        return ""
    if isinstance(default, (list, tuple)):
        default = " ".join(map(str, default))
    return f"`{default}`"


def _cell(text: str) -> str:
    """One table cell: rich's escaped brackets as brackets, on one line, nothing Markdown reads as markup."""
    return _escape(" ".join(text.replace("\\[", "[").split())).replace("|", "\\|")


def _text(doc: str) -> str:
    """A command's docstring as Markdown paragraphs (its line breaks inside a paragraph are not kept)."""
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(doc).replace("\\[", "["))
    return "\n\n".join(_escape(" ".join(p.split())) for p in paragraphs if p.strip())


def _escape(text: str) -> str:
    """HTML-escape, and backslash-escape Markdown's emphasis characters outside `code spans`."""
    pieces = re.split(r"(`[^`]*`)", html.escape(text, quote=False))
    return "".join(p if p.startswith("`") else re.sub(r"([*_\\])", r"\\\1", p) for p in pieces)
