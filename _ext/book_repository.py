"""Launch buttons and the repository link, from the one setting `repository: url` in _config.yml.

- Unset (empty): no launch buttons and no repository link; a local build links nowhere it can't
  stand behind.
- Set: the Binder/Colab/JupyterHub buttons configured under `launch_buttons` open the chapter
  from that repository, and each page's header links to the repository.
- After the build, no page may hold a placeholder address (PLACEHOLDERS): the build fails with the
  pages that do, so a book published with `YOUR-GITHUB-USER` in a link can't happen.
"""

from pathlib import Path

from sphinx.errors import ExtensionError

PLACEHOLDERS = ("YOUR-GITHUB-USER",)
LAUNCHERS = ("binderhub_url", "colab_url", "jupyterhub_url", "deepnote_url", "jupyterlite_url")


def repository_url(config) -> str:
    return (config.html_theme_options.get("repository_url") or "").strip()


def _buttons_follow_the_repository(app, config):
    options = config.html_theme_options
    if repository_url(config):
        options["use_repository_button"] = True
        return
    # sphinx-book-theme builds launch links from the repository's parts and fails without them
    options["use_repository_button"] = False
    options["launch_buttons"] = {**options.get("launch_buttons", {}), **{key: "" for key in LAUNCHERS}}


def pages_with_placeholders(outdir) -> dict:
    """{page relative to outdir: placeholders it holds} over every HTML page of the site."""
    found = {}
    for page in sorted(Path(outdir).rglob("*.html")):
        text = page.read_text(encoding="utf-8", errors="replace")
        held = [p for p in PLACEHOLDERS if p in text]
        if held:
            found[page.relative_to(outdir).as_posix()] = held
    return found


def _no_placeholder_in_the_site(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    found = pages_with_placeholders(app.outdir)
    if found:
        listed = "\n  ".join(f"{page}: {', '.join(held)}" for page, held in found.items())
        raise ExtensionError(
            f"{len(found)} page(s) hold a placeholder address; set `repository: url` in _config.yml "
            f"to the book's repository (or leave it empty for no links):\n  {listed}")


def setup(app):
    app.connect("config-inited", _buttons_follow_the_repository)
    app.connect("build-finished", _no_placeholder_in_the_site)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
