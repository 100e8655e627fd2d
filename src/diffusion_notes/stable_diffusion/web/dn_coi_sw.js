/* diffusion_notes: cross-origin isolation for the in-page model on a static host.
 *
 * onnxruntime-web runs on several threads only in a cross-origin isolated page (SharedArrayBuffer),
 * which needs two response headers: Cross-Origin-Opener-Policy: same-origin and
 * Cross-Origin-Embedder-Policy: require-corp. `make serve` (stable_diffusion/serve.py) sends them; a
 * static host such as GitHub Pages cannot. This service worker adds them to every response of the
 * site's own origin it serves. sd_page.js registers it (a panel's data-coi) and reloads the page once,
 * so that the page itself comes through the worker; where service workers are missing or refused,
 * nothing changes and the model runs on one thread.
 */
"use strict";
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));
self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (new URL(request.url).origin !== self.location.origin) return;  // the site's own files only
  if (request.cache === "only-if-cached" && request.mode !== "same-origin") return;  // fetch() would throw
  event.respondWith(fetch(request).then((response) => {
    if (response.status === 0) return response;  // opaque: its headers cannot be read or set
    const headers = new Headers(response.headers);
    headers.set("Cross-Origin-Opener-Policy", "same-origin");
    headers.set("Cross-Origin-Embedder-Policy", "require-corp");
    return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
  }));
});
