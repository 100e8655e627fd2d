"""The book's own tools, beside the library: what a chapter prints about its numbers (`report`) and
the picture of the running web UI (`screenshot`, through Playwright, a test extra).

The chapters and the tests import it; the library (`diffusion_notes`) never does.
"""
