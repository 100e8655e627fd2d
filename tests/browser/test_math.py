"""No page shows broken math: every built page, after MathJax has typeset it in headless Chromium.

A page fails when it holds
- a MathJax error (`mjx-merror`, drawn in red: "Misplaced &", "Undefined control sequence", ...);
- raw TeX in its visible text outside math and code: a control word such as `\\frac`, the
  delimiters `\\(`/`\\[` or a `$...$` pair that was not typeset (a formula Markdown broke apart,
  for example an inline formula wrapped so that its next line starts with `- ` and became a list item);
- prose typeset as math: a formula whose TeX holds a run of plain words outside `\\text{}`, which
  MathJax draws as one long italic word ("andtakingtheexpectationunder").

Each finding names the page and the text around it. Outside requests are aborted.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
NOT_PAGES = {"genindex.html", "search.html"}


def _pages() -> list:
    """The site's pages: not Sphinx's index and search pages, not _static/, not a bare redirect."""
    return sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")  # both editions (zh/)
                  if not any(part.startswith("_") for part in p.relative_to(HTML).parts) and p.name not in NOT_PAGES
                  and not p.read_text(errors="replace").lstrip().lower().startswith('<meta http-equiv="refresh"'))


PAGES = _pages() if HTML.exists() else []

# TeX that a reader should never see as text: a control word, \( \) \[ \], or a $...$ holding TeX
RAW_TEX = re.compile(r"\\[A-Za-z]{2,}|\\[()\[\]]|\$\$|\$[^$\s][^$]{0,200}?[\\^_{][^$]{0,200}?\$")
# inside a formula, what may legitimately hold words: \text{...} and its kin, and control words
TEXT_GROUPS = re.compile(r"\\(?:text\w*|mathrm|operatorname\*?|mbox|mathit|label|tag\*?)\s*\{[^{}]*\}")
WORDS = re.compile(r"\b[a-z]{2,}(?:\s+[a-z]{2,}){3,}\b")

TYPESET = """async () => {
    if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return null;
    await MathJax.startup.promise;
    // the page's formulas, as written in TeX (not the MathML MathJax adds for screen readers)
    return Array.from(MathJax.startup.document.math).filter(m => m.inputJax.name === "TeX").map(m => {
        const root = m.typesetRoot;
        const error = root ? root.querySelector("mjx-merror") : null;
        return {tex: m.math, display: m.display,
                error: error ? (error.getAttribute("data-mjx-error") || error.textContent) : null};
    });
}"""

# the text a reader sees outside math and code, one entry per text node with some context
VISIBLE_TEXT = """() => {
    const skip = "mjx-container, mjx-assistive-mml, math, script, style, noscript, template, pre, code, "
               + "kbd, samp, textarea, .highlight, .MathJax, #pst-search-dialog, .dn-frames";
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    const found = [];
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
        const parent = node.parentElement;
        if (!parent || parent.closest(skip) || !node.textContent.trim()) continue;
        const block = parent.closest("p, li, td, th, dd, dt, h1, h2, h3, h4, h5, h6, figcaption, a, div") || parent;
        found.push({text: node.textContent, context: block.textContent.replace(/\\s+/g, " ").trim().slice(0, 240)});
    }
    return found;
}"""


def raw_tex(texts: list) -> list:
    """'`match`, ... in "context"' for each passage of visible text holding raw TeX."""
    found: dict = {}
    for t in texts:
        for m in RAW_TEX.finditer(t["text"]):
            found.setdefault(t["context"], []).append(m.group(0))
    return [f"{', '.join(f'`{x}`' for x in dict.fromkeys(matches))} in {context!r}"
            for context, matches in found.items()]


def prose_in_math(tex: str) -> str | None:
    """A run of four or more plain words in a formula's TeX, outside \\text{} and control words."""
    stripped = re.sub(r"\\[A-Za-z]+", " ", TEXT_GROUPS.sub(" ", tex))
    match = WORDS.search(stripped)
    return match.group(0) if match else None


def test_raw_tex_is_caught():
    texts = [{"text": "- \\frac{(z-\\mu)^2}{2\\sigma^2} and", "context": "ch"},
             {"text": "the mean $\\mu_t$ stays", "context": "ch"},
             {"text": "costs $5 and $6 each; see section 2.1 (a) [b]", "context": "ch"}]
    assert raw_tex(texts[:1]) == ["`\\frac`, `\\mu`, `\\sigma` in 'ch'"]
    assert len(raw_tex(texts[1:2])) == 1 and raw_tex(texts[2:]) == []


def test_prose_in_math_is_caught():
    tex = r"\log p(z) = - \frac{1}{2} and taking the expectation under q"
    assert prose_in_math(tex) == "and taking the expectation under"
    assert prose_in_math(r"x_t = \sqrt{\bar\alpha_t}\, x_0 + \text{noise of the same shape as } x") is None
    assert prose_in_math(r"\operatorname{softmax}(QK^\top / \sqrt{d})\, V") is None


@pytest.mark.parametrize("page_path", PAGES or ["(no built pages)"])
def test_page_has_no_broken_math(page_path, offline_page, site_url):
    if not PAGES:
        pytest.fail(f"{HTML} has no pages: build the book first with `make book`", pytrace=False)
    page = offline_page
    page.goto(site_url + page_path, wait_until="load", timeout=120_000)
    if page.locator("script[src*='mathjax']").count():
        page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=60_000)
    formulas = page.evaluate(TYPESET) or []
    problems = [f"MathJax error {f['error']!r} in {f['tex'].strip()[:160]!r}" for f in formulas if f["error"]]
    n_errors = page.locator("mjx-merror").count()
    if n_errors > len(problems):
        problems.append(f"{n_errors - len(problems)} more mjx-merror on the page")
    problems += [f"prose typeset as math ({words!r}) in {f['tex'].strip()[:160]!r}"
                 for f in formulas if (words := prose_in_math(f["tex"]))]
    problems += [f"raw TeX {finding}" for finding in raw_tex(page.evaluate(VISIBLE_TEXT))]
    in_tab_order = page.locator("mjx-container[tabindex='0']").count()
    if in_tab_order:
        problems.append(f"{in_tab_order} formulas in the Tab order (tabindex=0)")
    assert not problems, f"{page_path}: {len(problems)} math problem(s)\n  " + "\n  ".join(problems)
