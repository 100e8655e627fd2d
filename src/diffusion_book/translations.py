"""The Chinese edition's catalogs (locales/zh_CN/LC_MESSAGES/book/*.po): what a finished catalog must hold.

A catalog is finished when every message the chapters have now (Sphinx's gettext builder extracts
them: `make translations`) has a translation that is not fuzzy, keeps the message's markup and
uses the edition's terms (locales/zh_CN/terms.csv, the glossary's Chinese forms):

- markup kept: the same inline code, math, role targets and link addresses as the English, since
  a translation is parsed as MyST again and code identifiers and printed values stay as they are;
- a numbered heading ("1. Denoising diffusion") keeps its number escaped ("1\\. ..."), or MyST
  would read the translation as a list and Sphinx would keep the English title;
- its bold and italic parse as they do in the English: CommonMark closes `**` only where the
  character before it is not punctuation or the one after it is, so "**要点。**其后" shows its
  asterisks, and "**要点**。其后" is bold;
- each term of terms.csv whose English pattern the message uses appears in one of its Chinese forms
  (a message kept as it is, such as a display formula, has nothing to translate).

    python -m diffusion_book.translations [PO ...]   # problems, per catalog; exit status 1 if any
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from diffusion_book.report import book_file

ROOT = book_file("intro.md").parent.parent
CATALOGS = ROOT / "locales" / "zh_CN" / "LC_MESSAGES" / "book"
TERMS = ROOT / "locales" / "zh_CN" / "terms.csv"

_CODE = re.compile(r"(`+)(.+?)\1", re.S)
_ROLE = re.compile(r"\{([\w:-]+)\}(`+)(.+?)\2", re.S)
_MATH = re.compile(r"\$\$(.+?)\$\$|\$([^$\n]+?)\$", re.S)
_LINK = re.compile(r"\]\(([^)\s]*)\)")
_NUMBERED = re.compile(r"^\d+\.\s")


@dataclass(frozen=True)
class Term:
    english: str
    chinese: tuple[str, ...]  # accepted forms, any one will do
    pattern: re.Pattern


def read_terms(path: Path = TERMS) -> list[Term]:
    with open(path, encoding="utf-8", newline="") as f:
        return [Term(row["english"], tuple(c.strip() for c in row["chinese"].split("/")),
                     re.compile(row["pattern"], re.I)) for row in csv.DictReader(f)]


def markup(text: str) -> list[str]:
    """The parts a translation must keep as they are: role names and targets, code, math and link addresses."""
    found = []
    rest = text
    for m in _ROLE.finditer(rest):
        target = m.group(3)
        target = target[target.rfind("<") + 1:-1] if target.endswith(">") and "<" in target else target
        found.append(f"{{{m.group(1)}}}{target}")
    rest = _ROLE.sub(" ", rest)
    found += [m.group(0) for m in _CODE.finditer(rest)]
    rest = _CODE.sub(" ", rest)
    found += ["$" + (m.group(1) or m.group(2)).strip() for m in _MATH.finditer(rest)]
    found += ["](" + m.group(1) for m in _LINK.finditer(rest)]
    return sorted(found)


def prose(text: str) -> str:
    """The text without code, math, roles and link addresses: where terms are looked for."""
    for pattern in (_ROLE, _CODE, _MATH, _LINK):
        text = pattern.sub(" ", text)
    return text


def emphasis(text: str) -> tuple[int, int]:
    """(bold spans, italic spans) that CommonMark finds in `text`."""
    from markdown_it import MarkdownIt

    tokens = [c for t in MarkdownIt("commonmark").parseInline(text) for c in (t.children or [])]
    return sum(t.type == "strong_open" for t in tokens), sum(t.type == "em_open" for t in tokens)


def problems(msgid: str, msgstr: str, fuzzy: bool, terms: list[Term]) -> list[str]:
    """What is wrong with one message's translation (empty: nothing)."""
    if not msgstr:
        return ["untranslated"]
    out = ["fuzzy"] if fuzzy else []
    theirs, ours = markup(msgid), markup(msgstr)
    if theirs != ours:
        lost = [x for x in theirs if x not in ours]
        added = [x for x in ours if x not in theirs]
        out.append(f"markup differs: missing {lost}, extra {added}")
    if emphasis(msgstr) != emphasis(msgid):
        out.append("bold or italic that does not parse: put punctuation outside the markers ('**要点**。')")
    if _NUMBERED.match(msgstr):
        out.append("a numbered heading's number must be escaped, as in '1\\. ...'")
    for block in ("- ", "* ", "#", "> ", "|"):
        if msgstr.startswith(block) and not msgid.startswith(block):
            out.append(f"the translation starts with {block!r}, which MyST reads as another kind of block")
    if msgstr == msgid:  # kept as it is (a formula, a name, a number): nothing in it to translate
        return out
    english = prose(msgid)
    chinese = prose(msgstr).lower()
    for term in terms:
        if term.pattern.search(english) and not any(c.lower() in chinese for c in term.chinese):
            out.append(f"term {term.english!r}: use {' or '.join(term.chinese)}")
    return out


def read_catalog(path: Path):
    from babel.messages.pofile import read_po

    with open(path, "rb") as f:
        return read_po(f)


def check_catalog(path: Path, terms: list[Term] | None = None, skip_terms: bool = False) -> list[tuple[str, str]]:
    """(msgid, problem) for every problem in the catalog at `path`."""
    terms = [] if skip_terms else (read_terms() if terms is None else terms)
    out = []
    for message in read_catalog(path):
        if not message.id:
            continue
        for problem in problems(message.id, message.string, message.fuzzy, terms):
            out.append((message.id, problem))
    return out


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted(CATALOGS.glob("*.po"))
    terms = read_terms()
    bad = 0
    for path in paths:
        found = check_catalog(path, terms, skip_terms=path.stem == "glossary")
        total = sum(1 for m in read_catalog(path) if m.id)
        done = total - len({msgid for msgid, p in found if p == "untranslated"})
        print(f"{path.name}: {done}/{total} translated, {len(found)} problems")
        for msgid, problem in found:
            print(f"  {problem}\n    msgid: {msgid[:100]!r}")
        bad += len(found)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
