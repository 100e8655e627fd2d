"""`webui --localization zh_CN`: the pages' labels in another language, the way the web UI localizes.

AUTOMATIC1111's web UI keeps a localization as a JSON file of {"English text": "translation"}
(its `localizations/` folder; `modules/localization.py` reads them) and translates in the browser:
`javascript/localization.js` rewrites every text node and placeholder or title whose text is a key,
on load and as Gradio adds elements. We do the same with our own files in `localizations/` and our
own script, given to Gradio as the page's head. A label that carries the book's chapter, such as
"Sampling method (ch. 2)", is looked up without it and keeps the chapter ("（第 2 章）").

What a file does not cover stays in English (sampler and upscaler names do in the web UI's files
too); `untranslated` lists an app's labels a file lacks, and the tests hold zh_CN to none.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

FOLDER = Path(__file__).with_name("localizations")
CHAPTER = re.compile(r"^(.*?) \(ch\. (\d+)\)$")
HAS_WORDS = re.compile(r"[A-Za-z]")

SCRIPT = r"""
(() => {
  const words = window.localization || {};
  const chapter = window.localizationChapter || " (ch. %s)";
  const translate = text => {
    const bare = text.trim();
    if (!bare) return null;
    if (bare in words) return text.replace(bare, words[bare]);
    const m = bare.match(/^(.*?) \(ch\. (\d+)\)$/);
    if (m && m[1] in words) return text.replace(bare, words[m[1]] + chapter.replace("%s", m[2]));
    return null;
  };
  const visit = root => {
    if (root.nodeType === Node.TEXT_NODE) {
      const parent = root.parentElement;
      if (parent && parent.closest("textarea, script, style, code, pre")) return;
      const out = translate(root.textContent);
      if (out !== null) root.textContent = out;
      return;
    }
    if (root.nodeType !== Node.ELEMENT_NODE) return;
    for (const name of ["placeholder", "title", "aria-label"]) {
      const value = root.getAttribute(name);
      const out = value === null ? null : translate(value);
      if (out !== null) root.setAttribute(name, out);
    }
    root.childNodes.forEach(visit);
  };
  const start = () => {
    visit(document.body);
    new MutationObserver(changes => changes.forEach(c => {
      if (c.type === "characterData") visit(c.target);
      else c.addedNodes.forEach(visit);
    })).observe(document.body, {childList: true, subtree: true, characterData: true});
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
"""

# how each language writes "(ch. N)" after a label
CHAPTER_FORMS = {"zh_CN": "（第 %s 章）"}


def available() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.json"))


def load(name: str) -> dict[str, str]:
    """The localization `name` ({English: translation}); a ValueError names the ones there are."""
    path = FOLDER / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no localization {name!r}; available: {', '.join(available()) or 'none'}")
    words = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(words, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in words.items()):
        raise ValueError(f"{path} must hold one JSON object of strings")
    return words


def head(name: str) -> str:
    """The `<script>`s the pages' head gets: the words, then the script that puts them in."""
    words = json.dumps(load(name), ensure_ascii=False).replace("</", "<\\/")
    form = json.dumps(CHAPTER_FORMS.get(name, " (ch. %s)"), ensure_ascii=False)
    return (f"<script>window.localization = {words}; window.localizationChapter = {form};</script>"
            f"<script>{SCRIPT}</script>")


def app_labels(demo) -> set[str]:
    """The words a reader sees on the pages' controls: labels, infos, placeholders, button texts.

    A chapter suffix is taken off; texts with no letters (the seed buttons' symbols) are left out."""
    found = set()
    for block in demo.blocks.values():
        texts = [getattr(block, attr, None) for attr in ("label", "info", "placeholder")]
        if type(block).__name__ in ("Button", "UploadButton", "DownloadButton"):
            texts.append(getattr(block, "value", None))
        for text in texts:
            if isinstance(text, str) and HAS_WORDS.search(text):
                m = CHAPTER.match(text.strip())
                found.add(m.group(1) if m else text.strip())
    return found


def untranslated(words: dict[str, str], labels: set[str]) -> list[str]:
    return sorted(label for label in labels if label not in words)
