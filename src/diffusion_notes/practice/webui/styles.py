"""The web UI's prompt styles: named prompt pieces kept in a styles.csv, added to a job's prompts by name.

    name,prompt,negative_prompt
    neon,"{prompt}, glowing","blurry"
    corner,in the top left,

A style's text with "{prompt}" in it is the new prompt with the prompt put in its place; any other
style text is appended after ", ". Styles apply in the order they are named, the negative ones to
the negative prompt, and a name the file does not hold adds nothing (the web UI skips it too; the
API says so in its warnings). Reading a styled prompt back, `extract` removes the styles whose
text it ends with (or wraps it in), as PNG Info does, so the prompt and the style names come back.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

FIELDS = ("name", "prompt", "negative_prompt")


class PromptStyle(NamedTuple):
    name: str
    prompt: str
    negative_prompt: str


def merge(style: str, prompt: str) -> str:
    """One style's text applied to a prompt: "{prompt}" replaced, or the two joined by ", " (empty parts left out)."""
    if "{prompt}" in style:
        return style.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style.strip()) if part)


def apply(prompt: str, styles: list[str]) -> str:
    """The prompt with each style's text applied in turn."""
    for style in styles:
        prompt = merge(style, prompt)
    return prompt


def extract_text(style: str, prompt: str) -> tuple[bool, str]:
    """(whether `prompt` carries `style`, the prompt without it): the inverse of `merge`."""
    prompt, style = prompt.strip(), style.strip()
    if "{prompt}" in style:
        left, right = style.split("{prompt}", 1)
        if prompt.startswith(left) and prompt.endswith(right):
            return True, prompt[len(left):len(prompt) - len(right)]
    elif prompt.endswith(style):
        rest = prompt[:len(prompt) - len(style)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


class StyleDatabase:
    """The styles of one styles.csv (columns name, prompt, negative_prompt; an old "text" column is the prompt)."""

    def __init__(self, path=None):
        self.path = Path(path) if path is not None else None
        self.styles: dict[str, PromptStyle] = {}
        self._read = None  # the file's mtime when last read
        self.reload()

    def current(self) -> StyleDatabase:
        """The database, read again if its file changed since it was last read."""
        mtime = self.path.stat().st_mtime_ns if self.path is not None and self.path.is_file() else None
        if mtime != self._read:
            self.reload()
        return self

    def reload(self) -> None:
        self.styles = {}
        self._read = self.path.stat().st_mtime_ns if self.path is not None and self.path.is_file() else None
        if self._read is None:
            return
        try:
            with open(self.path, encoding="utf-8-sig", newline="") as file:
                rows = list(csv.DictReader(file, skipinitialspace=True))
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise ValueError(f"{self.path.name} is not a styles CSV file: {err}") from None
        for row in rows:
            name = row.get("name")
            if not name or name.startswith("#"):  # empty rows and comments
                continue
            prompt = row.get("prompt", row.get("text")) or ""
            self.styles[name] = PromptStyle(name, prompt, row.get("negative_prompt") or "")

    def save(self) -> None:
        if self.path is None:
            raise ValueError("this style database has no file to save to")
        with open(self.path, "w", encoding="utf-8-sig", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(style._asdict() for style in self.styles.values())

    def unknown(self, names: list[str]) -> list[str]:
        return [name for name in names if name not in self.styles]

    def apply(self, prompt: str, negative_prompt: str, names: list[str]) -> tuple[str, str]:
        """(prompt, negative prompt) with the named styles applied; unknown names add nothing."""
        known = [self.styles[name] for name in names if name in self.styles]
        return apply(prompt, [s.prompt for s in known]), apply(negative_prompt, [s.negative_prompt for s in known])

    def extract(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """(style names, prompt, negative prompt) with every style the prompts carry taken out, last applied first."""
        found, left = [], [s for s in self.styles.values() if s.prompt or s.negative_prompt]
        while True:
            for style in left:
                ok, p = extract_text(style.prompt, prompt)
                ok_negative, n = extract_text(style.negative_prompt, negative_prompt)
                if ok and ok_negative:
                    prompt, negative_prompt = p, n
                    found.append(style.name)
                    left.remove(style)
                    break
            else:
                return list(reversed(found)), prompt, negative_prompt

    def api(self) -> list[dict]:
        """GET /sdapi/v1/prompt-styles: [{"name", "prompt", "negative_prompt"}]."""
        return [style._asdict() for style in self.styles.values()]
