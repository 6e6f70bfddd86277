"""Win-back playbooks: the YAML file read into validated, immutable values.

``load_playbooks`` reads the file, validates it into a
:class:`~services.notifier.core.playbook_book.PlaybookBook` and checks that
every action's template exists in every locale. It refuses a bad file with one
line per problem, each naming the file, the playbook and the field. The values
and the choice of a playbook are in :mod:`services.notifier.core.playbook_book`,
the settings shared by every playbook in
:mod:`services.notifier.core.playbook_defaults`; neither reads anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from services.common.errors import ConfigError
from services.notifier.core.playbook_book import PlaybookBook
from services.notifier.core.templates import (
    DEFAULT_TEMPLATES_DIR,
    FALLBACK_LOCALE,
    available_locales,
    missing_files,
)

DEFAULT_PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks.yaml"


def load_playbooks(
    path: str | Path = DEFAULT_PLAYBOOKS, *, templates_dir: str | Path = DEFAULT_TEMPLATES_DIR
) -> PlaybookBook:
    """Read, validate and cross-check a playbook file; raise ConfigError saying what to fix."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the playbook file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'defaults' and 'playbooks'")
    try:
        book = PlaybookBook.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(path, raw, err) for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from exc
    _check_templates(path, book, Path(templates_dir))
    return book


def _check_templates(path: Path, book: PlaybookBook, root: Path) -> None:
    locales = available_locales(root)
    if FALLBACK_LOCALE not in locales:
        raise ConfigError(f"{path}: no {FALLBACK_LOCALE!r} template folder under {root}")
    problems = []
    for playbook in book.playbooks:
        for i, action in enumerate(playbook.actions):
            for locale in locales:
                missing = missing_files(root, action.template, action.channel, locale=locale)
                if missing:
                    problems.append(
                        f"{path}: playbook {playbook.name!r}: actions[{i}].template: "
                        f"template {action.template!r} for {action.channel} is missing "
                        f"in locale {locale!r} (no {', '.join(missing)} under {root / locale})"
                    )
    if problems:
        raise ConfigError("\n".join(problems))


def _describe(path: Path, raw: dict[str, Any], err: Any) -> str:
    loc = list(err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    where = f"{path}: "
    if len(loc) >= 2 and loc[0] == "playbooks" and isinstance(loc[1], int):
        entry = (raw.get("playbooks") or [])[loc[1]]
        name = entry.get("name") if isinstance(entry, dict) else None
        where += f"playbook {name or '#' + str(loc[1] + 1)!r}: "
        loc = loc[2:]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return f"{where}{field or 'playbook'}: {msg}"
