"""MkDocs hooks of the user guide (mkdocs.yml ``hooks:``).

- parameters.md: the table of checkpoint parameters is written from
  ``candle_ckpt.params.CKPT_PARAMS`` at build time, so it always matches the code.
- troubleshooting.md must have a section for every error class of ``candle_ckpt.errors``.
- README.md (not part of the site) must link only to files that exist.
A failure stops the build with a message naming what is missing.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TABLE_MARKER = "<!-- ckpt-parameters-table -->"

# This checkout's package, not whatever candle_ckpt the environment has installed.
sys.path.insert(0, str(ROOT / "src"))

from candle_ckpt import errors  # noqa: E402
from candle_ckpt.params import CKPT_PARAMS, ParamType  # noqa: E402

_TYPE_NAMES = {
    ParamType.STRING: "string",
    ParamType.BOOLEAN: "boolean",
    ParamType.INTEGER: "integer",
    ParamType.INTEGER_NN: "integer ≥ 0",
    ParamType.INTEGER_GZ: "integer > 0",
    ParamType.FLOAT: "number",
    ParamType.FLOAT_NN: "number ≥ 0",
}


def _cell(text: str) -> str:
    # A pipe in a cell would end it: Python-Markdown's tables take \| as a literal one.
    return text.replace("|", "\\|")


def _default(value: Any) -> str:
    if value is None:
        return "*unset*"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def parameters_table() -> str:
    """One row per checkpoint parameter: name, default, accepted values, meaning."""
    rows = ["| parameter | default | accepted | meaning |",
            "| --- | --- | --- | --- |"]
    for d in CKPT_PARAMS:
        accepted = (", ".join(f"`{a}`" for a in d.allowed) if d.allowed
                    else _TYPE_NAMES[d.type_])
        rows.append(f"| `{d.name}` | {_default(d.default)} | {accepted} | {_cell(d.help)} |")
    return "\n".join(rows)


def error_classes() -> list[str]:
    """Every exception class candle_ckpt.errors defines."""
    return sorted(name for name, obj in vars(errors).items()
                  if isinstance(obj, type) and issubclass(obj, errors.CkptError)
                  and obj.__module__ == errors.__name__)


def missing_error_sections(markdown: str) -> list[str]:
    headings = set(re.findall(r"^#+ `(\w+)`", markdown, flags=re.MULTILINE))
    return [name for name in error_classes() if name not in headings]


_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)


def anchors(markdown: str) -> set[str]:
    """The heading anchors MkDocs gives a page (its default slugify, markup removed)."""
    from markdown.extensions.toc import slugify

    text = _FENCE.sub("", markdown)
    return {slugify(re.sub(r"[`*]", "", heading), "-")
            for heading in re.findall(r"^#+\s+(.+?)\s*$", text, flags=re.MULTILINE)}


def broken_readme_links(readme: Path) -> list[str]:
    """Relative links of README.md whose file, or anchor in a .md file, does not exist."""
    text = _FENCE.sub("", readme.read_text(encoding="utf-8"))
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        file = readme.parent / path
        if not file.exists() or (anchor and path.endswith(".md") and anchor not in
                                 anchors(file.read_text(encoding="utf-8"))):
            broken.append(target)
    return broken


def _fail(message: str) -> None:
    from mkdocs.exceptions import PluginError

    raise PluginError(message)


def on_config(config: Any, **kwargs: Any) -> Any:
    broken = broken_readme_links(ROOT / "README.md")
    if broken:
        _fail(f"README.md links to files that do not exist: {', '.join(broken)}")
    return config


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    name = page.file.src_uri
    if name == "parameters.md":
        if TABLE_MARKER not in markdown:
            _fail(f"docs/parameters.md: the marker {TABLE_MARKER} for the parameter table "
                  "is missing")
        return markdown.replace(TABLE_MARKER, parameters_table())
    if name == "troubleshooting.md":
        missing = missing_error_sections(markdown)
        if missing:
            _fail("docs/troubleshooting.md has no section (a heading `Name`) for the error "
                  f"class(es) {', '.join(missing)} of candle_ckpt.errors")
    return markdown
