"""A link on every page to the same page in the other edition, English at the site's root and Chinese in zh/.

The two editions are two builds of the same notebooks (README, "The Chinese edition"): `language` is
unset for English and "zh_CN" for Chinese, whose pages `make book` puts under _build/html/zh/. A page's
counterpart therefore has the same name in the other tree; the link climbs to the site's root and
goes down into the other edition. The head gets `<link rel="alternate" hreflang=...>` for both.

Display formulas are not messages: Sphinx would offer each for translation, and a translation that
differs from the original by a single character replaces the formula with a literal block's marker.
`KeepFormulas` marks them untranslatable before extraction and translation; both editions show the
chapter's own TeX.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.transforms import SphinxTransform

# language setting -> (folder under the site's root, the name of the edition in its own language, BCP 47 tag)
EDITIONS = {"en": ("", "English", "en"), "zh_CN": ("zh/", "中文", "zh-Hans")}


def edition(language: str | None) -> str:
    return "zh_CN" if (language or "en").replace("-", "_").startswith("zh") else "en"


def counterpart(pagename: str, language: str | None, target: str) -> str:
    """The relative address of `pagename` in edition `target`, seen from `pagename` in `language`'s edition."""
    here = EDITIONS[edition(language)][0]
    to_root = "../" * (pagename.count("/") + here.count("/"))
    return f"{to_root}{EDITIONS[target][0]}{pagename}.html"


def _add_switch(app, pagename, templatename, context, doctree):
    if doctree is None:  # search, genindex: no counterpart worth a link
        return
    own = edition(app.config.language)
    links = []
    for target, (_, name, tag) in EDITIONS.items():
        href = counterpart(pagename, app.config.language, target)
        context["metatags"] = context.get("metatags", "") + f'\n<link rel="alternate" hreflang="{tag}" href="{href}">'
        if target != own:
            links.append(f'<a class="book-language-switch" href="{href}" hreflang="{tag}" lang="{tag}">{name}</a>')
    context["body"] = f'<p class="book-language">{" ".join(links)}</p>\n' + context.get("body", "")


class KeepFormulas(SphinxTransform):
    default_priority = 5  # before Sphinx's i18n transforms (10 and 20)

    def apply(self, **kwargs):
        for node in self.document.findall(nodes.math_block):
            node["translatable"] = False


def setup(app):
    app.add_transform(KeepFormulas)
    app.connect("html-page-context", _add_switch)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
