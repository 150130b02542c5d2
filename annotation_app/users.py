"""Sign-in accounts as an administrator manages them from the command line.

Passwords come from a file's first line, else from a prompt (asked twice) when stdin is a terminal,
else from the first line of stdin; never from the command line, where other users of the machine
could read them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from refcoco_edit.errors import DataError, InputError

if TYPE_CHECKING:
    from refcoco_edit.store import Store

MIN_PASSWORD = 8


def read_password(password_file: Path | None, *, stdin=None, prompt: bool | None = None) -> str:
    """The new password: from a file, a terminal prompt (twice) or stdin's first line."""
    stdin = stdin or sys.stdin
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read {password_file}: {exc.strerror or exc}") from None
        password = text.splitlines()[0] if text else ""
    elif prompt if prompt is not None else stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise InputError("the two passwords differ")
    else:
        password = stdin.readline().rstrip("\r\n")
    if len(password) < MIN_PASSWORD:
        raise InputError(f"the password must have at least {MIN_PASSWORD} characters")
    return password


def import_users(store: Store, path: Path) -> list[tuple[str, str]]:
    """Add the accounts a YAML or JSON file lists (`[{name, role, password_file}]`, password files
    relative to the file); names already in the store are left as they are."""
    import yaml

    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read users file {path}: {exc}") from None
    if isinstance(entries, dict) and "users" in entries:
        entries = entries["users"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataError(f"{path}: expected a list of {{name, role, password_file}}")
    added = []
    for e in entries:
        try:
            name, role = str(e["name"]), str(e["role"])
        except KeyError as exc:
            raise DataError(f"{path}: an entry has no {exc}") from None
        if store.get_user(name) is not None:
            continue
        pw_file = e.get("password_file")
        password = read_password(path.parent / pw_file) if pw_file else None
        store.add_user(name, role, password, user="cli")
        added.append((name, role))
    return added


