"""Chinese text marked as Chinese, so screen readers and fonts treat it as such.

The glossary pairs the source's Chinese terms with the book's English ones. Every table cell whose
text holds Chinese characters gets `lang="zh-Hans"` (the source writes Simplified Chinese), on
every page, not only the glossary: a reader's screen reader then switches voice, and the browser
picks a CJK font for exactly those cells. tests/browser/test_rendered_book.py checks the built page.
"""

import re

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
CELL = re.compile(r"<(td|th)((?:\s[^>]*)?)>(.*?)</\1>", re.S)


def mark_chinese_cells(html: str) -> str:
    """`html` with lang="zh-Hans" on each table cell whose text has a Han character and no lang yet."""

    def mark(match):
        tag, attributes, inner = match.groups()
        text = re.sub(r"<[^>]+>", "", inner)
        if not HAN.search(text) or "lang=" in attributes:
            return match.group(0)
        return f'<{tag}{attributes} lang="zh-Hans">{inner}</{tag}>'

    return CELL.sub(mark, html)


def _mark_page(app, pagename, templatename, context, doctree):
    if "body" in context:
        context["body"] = mark_chinese_cells(context["body"])


def setup(app):
    app.connect("html-page-context", _mark_page)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
