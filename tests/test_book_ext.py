"""The book's own Sphinx hooks (_ext/), tested without a build."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_ext"))
from book_glossary import mark_chinese_cells


def test_only_cells_with_chinese_are_marked():
    html = '<td><p>扩散模型</p></td><td class="x"><p>noise</p></td><th>Chinese</th><td lang="en">先验</td>'
    assert mark_chinese_cells(html) == ('<td lang="zh-Hans"><p>扩散模型</p></td><td class="x"><p>noise</p></td>'
                                        '<th>Chinese</th><td lang="en">先验</td>')


def test_pictures_load_lazily_and_the_icon_script_goes():
    from book_weight import lazy_images, without_icon_script

    assert lazy_images('<img src="a.png"><img loading="eager" src="b.png">') == (
        '<img loading="lazy" src="a.png"><img loading="eager" src="b.png">')
    page = ('<script defer src="../_static/scripts/fontawesome.js?digest=5"></script>\n'
            '<script src="../_static/scripts/bootstrap.js"></script>')
    assert without_icon_script(page) == '<script src="../_static/scripts/bootstrap.js"></script>'


def test_search_scripts_go_from_pages_without_search_as_you_type():
    from book_weight import without_search_scripts

    page = ('<script src="../_static/searchtools.js"></script>\n    '
            '<script src="../_static/language_data.js"></script>\n    <script src="../searchindex.js"></script>\n'
            '<script src="../_static/sphinx_highlight.js"></script>')
    assert without_search_scripts(page) == '<script src="../_static/sphinx_highlight.js"></script>'
