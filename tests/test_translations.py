"""The Chinese edition's catalogs keep step with the chapters (diffusion_book.translations, `make translations`).

The messages are extracted afresh from the chapters as they are now (Sphinx's gettext builder, as
`make translations` runs it, into a temporary folder), so an English paragraph edited without its
translation fails here: its new text has no translation in locales/. Every message must be
translated and not fuzzy, keep its markup, and use the edition's terms (locales/zh_CN/terms.csv).
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffusion_book import translations as tr

ROOT = Path(__file__).resolve().parents[1]
JB = Path(sys.executable).with_name("jupyter-book")


# -- the checker, on messages made to break each rule ----------------------------------------------

TERMS = tr.read_terms()


def test_markup_collects_code_math_roles_and_addresses():
    text = "See {eq}`eq-q-sample`, {ref}`the table <tab-x>`, `q_sample(x0, t)`, $\\bar\\alpha_t$ and [this](https://a.b/c)."
    assert tr.markup(text) == sorted(["{eq}eq-q-sample", "{ref}tab-x", "`q_sample(x0, t)`", "$\\bar\\alpha_t",
                                      "](https://a.b/c"])


@pytest.mark.parametrize("msgid, msgstr, expected", [
    ("The noise at $t$.", "", "untranslated"),
    ("The noise at $t$.", "时间 $s$ 的噪声。", "markup differs"),
    ("Call `q_sample`.", "调用 `q_sample()`。", "markup differs"),
    ("See {eq}`eq-a`.", "见 {eq}`eq-b`。", "markup differs"),
    ("Read [the paper](https://x.y/p).", "读[论文](https://x.y/q)。", "markup differs"),
    ("1. Denoising diffusion (DDPM)", "1. 去噪扩散（DDPM）", "numbered heading"),
    ("The prompt is read by the text encoder.", "文字由文本编码器读取。", "term 'prompt'"),
    ("Use classifier-free guidance.", "使用无条件引导。", "term 'classifier-free guidance'"),
    ("A step.", "- 一步。", "another kind of block"),
    ("**Maps show places.** A map...", "**注意力图反映的是位置。**一张图……", "bold or italic"),
])
def test_each_rule_catches_its_mistake(msgid, msgstr, expected):
    found = tr.problems(msgid, msgstr, False, TERMS)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize("msgid, msgstr", [
    ("The noise at $t$, see {eq}`eq-a` and `q_sample`.", "$t$ 时刻的噪声，见 {eq}`eq-a` 与 `q_sample`。"),
    ("1. Denoising diffusion (DDPM)", "1\\. 去噪扩散（DDPM）"),
    ("The prompt is read by the text encoder.", "提示词由文本编码器读取。"),
    ("The variable `noise_pred` holds it.", "变量 `noise_pred` 保存它。"),  # a term inside code is not prose
    ("Read {ref}`the table <tab-x>`.", "见{ref}`表 <tab-x>`。"),
    ("**Maps show places.** A map...", "**注意力图反映的是位置**。一张图……"),
])
def test_a_faithful_translation_passes(msgid, msgstr):
    assert tr.problems(msgid, msgstr, False, TERMS) == []


def test_a_fuzzy_translation_is_not_finished():
    assert tr.problems("The noise.", "噪声。", True, TERMS) == ["fuzzy"]


# -- the catalogs themselves ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> dict:
    """msgid sets per page, extracted from the chapters now, as `make translations` does."""
    config = ROOT / "_build" / "config-i18n-test.yml"  # beside the Makefile's configs: `../_ext` resolves
    config.parent.mkdir(exist_ok=True)
    text = (ROOT / "_config.yml").read_text(encoding="utf-8")
    config.write_text(re.sub(r"(?m)^(  execute_notebooks:).*$", r'\1 "off"', text), encoding="utf-8")
    out = tmp_path_factory.mktemp("i18n")
    run = subprocess.run([str(JB), "build", str(ROOT), "--builder", "custom", "--custom-builder", "gettext",
                          "--config", str(config), "--path-output", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    pots = sorted((out / "_build" / "gettext" / "book").glob("*.pot"))
    assert pots, "the gettext builder wrote no catalogs"
    return {pot.stem: {m.id for m in tr.read_catalog(pot) if m.id} for pot in pots}


def test_every_page_has_a_catalog(extracted):
    assert sorted(extracted) == sorted(p.stem for p in tr.CATALOGS.glob("*.po"))


def test_every_message_of_the_chapters_is_translated(extracted):
    """100% translated, 0 fuzzy, against the messages the chapters hold now."""
    missing, fuzzy, total = [], [], 0
    for page, ids in extracted.items():
        catalog = {m.id: m for m in tr.read_catalog(tr.CATALOGS / f"{page}.po") if m.id}
        total += len(ids)
        missing += [f"{page}: {i[:90]!r}" for i in sorted(ids) if i not in catalog or not catalog[i].string]
        fuzzy += [f"{page}: {i[:90]!r}" for i in sorted(ids) if i in catalog and catalog[i].fuzzy]
    print(f"{total} messages, {total - len(missing)} translated, {len(fuzzy)} fuzzy")
    assert not missing and not fuzzy, (f"{len(missing)} of {total} messages untranslated, {len(fuzzy)} fuzzy "
                                       f"(run `make translations`, then translate them):\n  "
                                       + "\n  ".join((missing + fuzzy)[:40]))


@pytest.mark.parametrize("page", sorted(p.stem for p in tr.CATALOGS.glob("*.po")))
def test_translations_keep_markup_and_terms(page):
    found = tr.check_catalog(tr.CATALOGS / f"{page}.po", TERMS, skip_terms=page == "glossary")
    found = [(i, p) for i, p in found if p != "untranslated"]  # counted above
    assert not found, "\n".join(f"{p}\n    {i[:120]!r}" for i, p in found[:30])


def test_every_term_of_the_edition_is_in_the_glossary():
    glossary = (ROOT / "book" / "glossary.md").read_text(encoding="utf-8").lower()
    absent = [t.english for t in TERMS if not all(c.lower() in glossary for c in t.chinese)]
    assert not absent, f"terms.csv has terms the glossary does not give: {absent}"


# -- the language switch ---------------------------------------------------------------------------

def _book_language():
    spec = importlib.util.spec_from_file_location("book_language", ROOT / "_ext" / "book_language.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pagename, language, target, href", [
    ("book/01_ddpm", None, "zh_CN", "../zh/book/01_ddpm.html"),
    ("book/01_ddpm", "zh_CN", "en", "../../book/01_ddpm.html"),
    ("book/intro", "en", "zh_CN", "../zh/book/intro.html"),
    ("index", "zh_CN", "en", "../index.html"),
    ("index", "en", "zh_CN", "zh/index.html"),
])
def test_a_page_links_to_itself_in_the_other_edition(pagename, language, target, href):
    assert _book_language().counterpart(pagename, language, target) == href


def test_the_chinese_table_of_contents_lists_the_same_pages():
    """locales/zh_CN/_toc.yml is _toc.yml with Chinese part names: the same files, in the same order."""
    files = [re.findall(r"(?m)^\s*(?:root|- file):\s*(\S+)", (path).read_text(encoding="utf-8"))
             for path in (ROOT / "_toc.yml", ROOT / "locales" / "zh_CN" / "_toc.yml")]
    captions = re.findall(r"(?m)^\s*- caption:\s*(.+)$", (ROOT / "locales" / "zh_CN" / "_toc.yml").read_text("utf-8"))
    assert files[0] == files[1]
    assert captions and all(re.search(r"[\u4e00-\u9fff]", c) for c in captions)
