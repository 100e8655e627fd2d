"""Serve a folder on 127.0.0.1 with the cross-origin isolation headers: `make serve`'s server.

    python src/diffusion_notes/stable_diffusion/serve.py [PORT] [--directory _build/html]

Python's http.server, plus two headers on every response, Cross-Origin-Opener-Policy: same-origin
and Cross-Origin-Embedder-Policy: require-corp: with them the page is cross-origin isolated
(SharedArrayBuffer), and Chapter 13's in-page model runs onnxruntime-web on several threads. Every
file of the site is its own, so nothing the pages load is refused. It runs by its path, with no
package import (any Python 3.10+); the tests and the benchmark import `serve` from it.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import threading

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
         ".onnx": "application/octet-stream", ".json": "application/json"}


class IsolatedHandler(http.server.SimpleHTTPRequestHandler):
    """Files of `directory`, with the isolation headers, and the types a module script and WebAssembly need."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}
    quiet = False

    def end_headers(self):
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format, *args):  # the base class's names
        if not self.quiet:
            super().log_message(format, *args)


class PlainHandler(IsolatedHandler):
    """The same files and types without the isolation headers: a static host that sends none."""

    def end_headers(self):
        http.server.SimpleHTTPRequestHandler.end_headers(self)


def serve(directory, port: int = 0, quiet: bool = True, isolated: bool = True):
    """Serve `directory` in a background thread; returns (base URL ending in /, stop). Port 0: a free one.

    `isolated=False` leaves out the cross-origin isolation headers (as a plain static host does).
    """
    handler = type("Handler", (IsolatedHandler if isolated else PlainHandler,), {"quiet": quiet})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=str(directory)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    return f"http://127.0.0.1:{server.server_address[1]}/", stop


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", nargs="?", type=int, default=8000)
    parser.add_argument("--directory", default="_build/html")
    args = parser.parse_args(argv)
    handler = functools.partial(IsolatedHandler, directory=args.directory)
    with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler) as server:
        print(f"serving {args.directory} on http://127.0.0.1:{args.port}/ (cross-origin isolated; Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
