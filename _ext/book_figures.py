"""A chapter's figures open at full size: press (or Enter on) a figure to see it at its own pixel size.

A figure in the page's column is scaled down to the column's width, which can make a wide figure's
labels small. Each figure of a code cell's output (`figure img` and `img` in `.cell_output`; not a
slider panel's frame) becomes a control: `role="button"`, in the Tab order, with a zoom-in cursor.
Pressing it opens a `<dialog>` holding the same picture at its natural size, scrollable where it is
larger than the window; a press, Escape or the close button closes it. tests/browser/test_figures.py
checks this and the figures' captions and alt text.
"""

SCRIPT = r"""
document.addEventListener("DOMContentLoaded", () => {
  const pictures = Array.from(document.querySelectorAll(".cell_output img, figure img"))
    .filter(img => !img.closest(".dn-panel, .dn-sd-panel, .book-figure-view"));
  if (!pictures.length) return;
  const view = document.createElement("dialog");
  view.className = "book-figure-view";
  view.setAttribute("aria-label", "Figure at full size");
  view.innerHTML = '<button type="button" class="book-figure-close" aria-label="Close">×</button><img alt="">';
  document.body.appendChild(view);
  const big = view.querySelector("img");
  const close = () => view.close();
  view.addEventListener("click", close);
  view.addEventListener("close", () => { big.removeAttribute("src"); if (view.opener) view.opener.focus(); });
  pictures.forEach(img => {
    img.setAttribute("role", "button");
    img.setAttribute("tabindex", "0");
    img.classList.add("book-zoomable");
    img.title = "Open at full size";
    const open = () => {
      big.src = img.currentSrc || img.src;
      big.alt = img.alt;
      view.opener = img;
      view.showModal();
    };
    img.addEventListener("click", open);
    img.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
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
    app.connect("html-page-context", _add)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
