"""A chapter's figures open at full size, and pictures that change say what they show.

A slider panel's picture (`img.dn-frame`) gets alt text naming the values its controls show, and an
animation's frame its number; both follow every change of the picture (`bookDescribeFrames`).

Press (or Enter on) a figure to see it at its own pixel size.

A figure in the page's column is scaled down to the column's width, which can make a wide figure's
labels small. Each figure of a code cell's output (`figure img` and `img` in `.cell_output`; not a
slider panel's frame) becomes a control with a zoom-in cursor: the link to its file that Sphinx puts
around a figure's picture, or the picture itself (`role="button"`, in the Tab order) where there is
none. Pressing it opens a `<dialog>` holding the same picture at its natural size, scrollable where it is
larger than the window; a press, Escape or the close button closes it. tests/browser/test_figures.py
checks this and the figures' captions and alt text.

myst-nb wraps every display output of a cell that has figure options in a figure of its own: a
table printed before the picture gets the caption too, and a cell drawing two pictures gets two
numbered figures with one caption. `OneFigurePerCell` keeps one figure per cell: outputs without a
picture are taken out of their figure, and the pictures of one cell go into its first figure.
Such a cell's figure has no `name` in its metadata (it would be defined twice while parsing); it is
numbered all the same.
"""

from docutils import nodes
from sphinx.transforms import SphinxTransform


def _has_picture(figure) -> bool:
    return any(str(c.get("mime_type", "")).startswith("image/") for c in figure.findall(nodes.container))


class OneFigurePerCell(SphinxTransform):
    default_priority = 200  # after the notebook is parsed, before Sphinx numbers the figures (999)

    def apply(self, **kwargs):
        for cell in list(self.document.findall(nodes.container)):
            if cell.get("nb_element") != "cell_code_output":
                continue
            figures = [f for f in cell.children if isinstance(f, nodes.figure)]
            if len(figures) < 2:
                continue
            first = None
            for figure in figures:
                content = [c for c in figure.children if not isinstance(c, (nodes.caption, nodes.legend))]
                if not _has_picture(figure):
                    figure.replace_self(content)  # a table or text: no caption of its own
                elif first is None:
                    first = figure
                else:
                    caption = next(c for c in first.children if isinstance(c, nodes.caption))
                    for node in content:
                        first.insert(first.index(caption), node)
                    figure.parent.remove(figure)

SCRIPT = r"""
// A slider panel's picture and an animation's frame say what they show now: the panel's picture
// names the values its controls show, an animation's frame its place in the sequence. Each is
// rewritten whenever the picture changes.
const BOOK_WORDS = (document.documentElement.lang || "").startsWith("zh")
  ? {picture: shown => `当前取值（${shown.join("，")}）对应的图片`, frame: (k, n) => `动画第 ${k} 帧，共 ${n} 帧`,
     view: "原尺寸图片", close: "关闭", open: "查看原尺寸图片"}
  : {picture: shown => `The picture for ${shown.join(", ")}`, frame: (k, n) => `Animation frame ${k} of ${n}`,
     view: "Figure at full size", close: "Close", open: "Open at full size"};

function bookDescribeFrames() {
  document.querySelectorAll("div.dn-panel").forEach(panel => {
    const img = panel.querySelector("img.dn-frame");
    if (!img) return;
    const describe = () => {
      const shown = Array.from(panel.querySelectorAll("[data-control]")).map(field => {
        const label = field.closest("label");
        const name = label && label.querySelector("span") ? label.querySelector("span").textContent : "";
        const value = field.tagName === "SELECT" ? field.options[field.selectedIndex].text
          : (field.getAttribute("aria-valuetext") || field.value);
        return `${name} ${value}`.trim();
      });
      img.alt = BOOK_WORDS.picture(shown);
    };
    describe();
    new MutationObserver(describe).observe(img, {attributes: true, attributeFilter: ["src"]});
  });
  document.querySelectorAll("div.animation").forEach(player => {
    const img = player.querySelector("img"), slider = player.querySelector("input.anim-slider");
    if (!img || !slider) return;
    const describe = () => {
      img.alt = BOOK_WORDS.frame(Number(slider.value) + 1, Number(slider.max) + 1);
    };
    describe();
    new MutationObserver(describe).observe(img, {attributes: true, attributeFilter: ["src"]});
  });
}
window.addEventListener("load", bookDescribeFrames);

document.addEventListener("DOMContentLoaded", () => {
  const pictures = Array.from(document.querySelectorAll(".cell_output img, figure img"))
    .filter(img => !img.closest(".dn-panel, .dn-sd-panel, .book-figure-view"));
  if (!pictures.length) return;
  const view = document.createElement("dialog");
  view.className = "book-figure-view";
  view.setAttribute("aria-label", BOOK_WORDS.view);
  view.innerHTML = '<button type="button" class="book-figure-close">×</button><img alt="">';
  view.querySelector("button").setAttribute("aria-label", BOOK_WORDS.close);
  document.body.appendChild(view);
  const big = view.querySelector("img");
  const close = () => view.close();
  view.addEventListener("click", close);
  view.addEventListener("close", () => { big.removeAttribute("src"); if (view.opener) view.opener.focus(); });
  pictures.forEach(img => {
    // Sphinx links a figure's picture to its file; the link stays (a new tab, no script), the press opens the view
    const control = img.closest("a.image-reference") || img;
    if (control === img) { img.setAttribute("role", "button"); img.setAttribute("tabindex", "0"); }
    img.classList.add("book-zoomable");
    control.title = BOOK_WORDS.open;
    const open = e => {
      if (e) e.preventDefault();
      big.src = img.currentSrc || img.src;
      big.alt = img.alt;
      view.opener = control;
      view.showModal();
    };
    control.addEventListener("click", open);
    if (control === img) img.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") open(e); });
  });
});
"""

STYLE = """
img.book-zoomable { cursor: zoom-in; }
dialog.book-figure-view { max-width: 100vw; max-height: 100vh; width: auto; padding: 0.5rem;
  border: none; overflow: auto; background: var(--pst-color-background, #fff); cursor: zoom-out; }
dialog.book-figure-view::backdrop { background: rgba(0, 0, 0, 0.7); }
dialog.book-figure-view img { max-width: none; max-height: none; width: auto; height: auto; display: block; }
button.book-figure-close { position: sticky; top: 0; float: right; font-size: 1.5rem; line-height: 1;
  border: none; background: transparent; cursor: pointer; }
"""


def _add(app, pagename, templatename, context, doctree):
    if doctree is not None:
        context["metatags"] = context.get("metatags", "") + f"\n<style>{STYLE}</style>\n<script>{SCRIPT}</script>"


def setup(app):
    app.add_transform(OneFigurePerCell)
    app.connect("html-page-context", _add)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
