/* diffusion_notes: the book's shipped Stable Diffusion, run in the page with onnxruntime-web.
 *
 * Written out by `python -m diffusion_notes export stable_diffusion --format onnx --out DIR`
 * (src/diffusion_notes/stable_diffusion/web_export.py) next to text_encoder.onnx, unet.onnx,
 * vae_decoder.onnx, vocab.json and config.json; onnxruntime-web (ort.wasm.min.js) is expected in
 * ../ort/ unless a panel's data-ort says otherwise. Nothing is loaded from outside the site.
 *
 * It follows the Python pipeline step for step (LatentDiffusionPipeline with the same settings):
 *   tokens    the table of vocab.json (web_vocab.py, its Python twin); "" is the unconditional caption
 *   noise     torch's CPU torch.randn: mt19937 + torch's Box-Muller normal_fill (tests/web_noise.py,
 *             its Python twin): seed N here is torch.Generator().manual_seed(N) there, the same draws in
 *             the same order (x_T first, then Euler a's noise after each UNet call)
 *   grids     foundations/grids.py make_grid: DDIM "leading", Euler a float32 "linspace" with
 *             sigmas interpolated in t, DPM++ 2M linspace over n + 1 points, rounded
 *   steps     foundations/sampler_steps.py: ddim_update (eta 0), euler_update with sigma_up,
 *             dpmpp_2m_update; coefficients as prepare_step makes them, each tensor
 *             operation rounded to float32 as torch computes it
 *   guidance  foundations/guidance.py: one UNet call on [x, x] with [cond; uncond] states,
 *             eps = eps_uncond + s (eps_cond - eps_uncond); none when s = 1
 *
 * API (for tests and the benchmark): window.diffusionNotesSD
 *   .load(modelUrl?)                    -> Promise<model>  (cached; default: this script's folder)
 *   .generate({prompt, sampler, steps, guidance, seed, model?})
 *                                       -> Promise<{pixels: Uint8ClampedArray (32*32*3 RGB, row
 *                                          major), width, height, ms, latents: Float32Array}>
 *   .tokenize(text, vocab)              -> 77 open_clip ids; throws naming an unknown word
 *   .randn(seed, n)                     -> Float32Array: torch.randn(n, generator=manual_seed(seed))
 *   .TorchGenerator, .makeGrid          the pieces, for tests
 */
(function () {
  "use strict";
  if (window.diffusionNotesSD) { window.diffusionNotesSD.scan(); return; }
  const f = Math.fround;
  const SCRIPT_URL = document.currentScript ? document.currentScript.src : location.href;
  const MODEL_URL = new URL("./", SCRIPT_URL).href;
  const DEFAULT_ORT_URL = new URL("../ort/", SCRIPT_URL).href;
  const SAMPLERS = { "DDIM": "ddim", "Euler a": "euler_a", "DPM++ 2M": "dpmpp_2m" };

  // ---- noise: torch's CPU generator (tests/web_noise.py) -------------------------------------
  class TorchGenerator {
    constructor(seed) {
      if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
        throw new Error(`seed must be an integer in [0, 2^32 - 1], got ${seed}`);
      }
      this.mt = new Uint32Array(624);
      this.mt[0] = seed >>> 0;
      for (let i = 1; i < 624; i++) {
        const p = this.mt[i - 1] ^ (this.mt[i - 1] >>> 30);
        this.mt[i] = (Math.imul(1812433253, p) + i) >>> 0;  // mt[i] = 1812433253 (p) + i mod 2^32
      }
      this.index = 624;
    }
    twist() {
      const mt = this.mt;
      for (let k = 0; k < 624; k++) {
        const y = (mt[k] & 0x80000000) | (mt[(k + 1) % 624] & 0x7fffffff);
        mt[k] = (mt[(k + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0)) >>> 0;
      }
      this.index = 0;
    }
    nextUint32() {
      if (this.index >= 624) this.twist();
      let y = this.mt[this.index++];
      y ^= y >>> 11; y ^= (y << 7) & 0x9d2c5680; y ^= (y << 15) & 0xefc60000; y ^= y >>> 18;
      return y >>> 0;
    }
    uniform() { return (this.nextUint32() & 0xffffff) * 5.9604644775390625e-8; }  // (r & (2^24 - 1)) 2^-24
    randn(n) {  // torch's normal_fill: n uniforms, then Box-Muller per block of 16
      if (!Number.isInteger(n) || n < 16) throw new Error(`randn needs n >= 16, got ${n}`);
      const z = new Float32Array(n);
      for (let i = 0; i < n; i++) z[i] = this.uniform();
      for (let j = 0; j + 16 <= n; j += 16) boxMuller16(z, j);
      if (n % 16) {
        for (let i = n - 16; i < n; i++) z[i] = this.uniform();
        boxMuller16(z, n - 16);
      }
      return z;
    }
  }
  function boxMuller16(z, j) {  // r = sqrt(-2 log(1 - u_i)), theta = 2 pi u_{i+8}: z_i = r cos, z_{i+8} = r sin
    for (let i = 0; i < 8; i++) {
      const u1 = f(1 - z[j + i]), u2 = z[j + i + 8];
      const radius = f(Math.sqrt(f(-2 * f(Math.log(u1)))));
      const theta = f(2.0 * Math.PI * u2);
      z[j + i] = f(radius * f(Math.cos(theta)));
      z[j + i + 8] = f(radius * f(Math.sin(theta)));
    }
  }
  const randn = (seed, n) => new TorchGenerator(seed).randn(n);

  // ---- tokens: the table of vocab.json (web_vocab.py) ----------------------------------------
  function unknownWordMessage(word, vocab) {
    const groups = Object.entries(vocab.groups).map(([name, words]) => `${name}: ${words.join(", ")}`)
      .join("; ");
    const n = Object.keys(vocab.words).length;
    return `unknown word "${word}": the model knows only the ${n} words and signs of the Shapes captions ` +
      `(${groups}; and positions, relations and the captions' other words)`;
  }
  function tokenize(text, vocab) {
    const pattern = new RegExp(vocab.pattern, "gu");
    const clean = text.trim().split(/\s+/).filter(Boolean).join(" ").toLowerCase();
    const ids = [vocab.start_id];
    for (const piece of clean.match(pattern) || []) {
      if (!Object.prototype.hasOwnProperty.call(vocab.words, piece)) throw new Error(unknownWordMessage(piece, vocab));
      ids.push(...vocab.words[piece]);
    }
    ids.push(vocab.end_id);
    const L = vocab.context_length;
    if (ids.length > L) ids.splice(L - 1, ids.length - L + 1, vocab.end_id);  // cut, the end token last
    while (ids.length < L) ids.push(vocab.pad_id);
    return ids;
  }

  // ---- grids: foundations/grids.py make_grid -------------------------------------------------
  function roundHalfEven(x) {
    const r = Math.round(x);
    return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
  }
  function linspace(stop, num) {  // numpy's linspace(0, stop, num): i * (stop / (num - 1)), the last = stop
    if (num === 1) return [0];
    const step = stop / (num - 1), y = [];
    for (let i = 0; i < num; i++) y.push(i * step);
    y[num - 1] = stop;
    return y;
  }
  function interp(t, table) {  // numpy's interp(t, arange(T), table)
    const j = Math.floor(t);
    if (j >= table.length - 1) return table[table.length - 1];
    return (table[j + 1] - table[j]) * (t - j) + table[j];
  }
  function makeGrid(sampler, n, schedule) {
    const T = schedule.num_train_timesteps;
    if (!Number.isInteger(n) || n < 1 || n > T) {
      throw new Error(`steps must be an integer between 1 and ${T}, got ${n}`);
    }
    if (sampler === "ddim") {  // "leading": 0, k, 2k, ... with k = T // n, reversed
      const k = Math.floor(T / n);
      return { timesteps: Array.from({ length: n }, (_, i) => (n - 1 - i) * k), sigmas: null };
    }
    let timesteps;
    if (sampler === "euler_a") timesteps = linspace(T - 1, n).map(f).reverse();  // float32, not rounded
    else if (sampler === "dpmpp_2m") timesteps = linspace(T - 1, n + 1).map(roundHalfEven).reverse().slice(0, n);
    else throw new Error(`sampler must be one of ${Object.keys(SAMPLERS).join(", ")}, got ${sampler}`);
    const table = schedule.sigmas;
    return { timesteps, sigmas: [...timesteps.map((t) => interp(t, table)), 0] };
  }

  // ---- steps: foundations/sampler_steps.py, coefficients as samplers.prepare_step ------------
  const vpScale = (sigma) => 1 / Math.sqrt(1 + sigma * sigma);  // sqrt(alpha_bar)
  function prepare(sampler, grid, schedule) {
    const t = grid.timesteps, n = t.length, ab = schedule.alphas_cumprod, out = [];
    for (let i = 0; i < n; i++) {
      if (sampler === "ddim") {  // ddim_coefficients in float32, eta = 0, alpha_bar_{-1} = 1
        const a = f(ab[t[i]]), aPrev = i + 1 < n ? f(ab[t[i + 1]]) : 1;
        out.push({ sqrtAlphaBar: f(Math.sqrt(a)), sqrtOneMinus: f(Math.sqrt(f(1 - a))),
          sqrtAlphaBarPrev: f(Math.sqrt(aPrev)), coefEps: f(Math.sqrt(f(1 - aPrev))) });
        continue;
      }
      const s = grid.sigmas[i], sp = grid.sigmas[i + 1];
      if (sampler === "euler_a") {  // euler_ancestral_coefficients, float64
        const up = Math.sqrt(sp * sp * (s * s - sp * sp) / (s * s)), down = Math.sqrt(sp * sp - up * up);
        out.push({ sigma: s, dt: down - s, scale: vpScale(s), scalePrev: vpScale(sp), sigmaUp: up });
      } else {  // dpmpp_2m_coefficients, float64
        const alpha = vpScale(s), alphaPrev = vpScale(sp), lambda = -Math.log(s);
        const lambdaLast = i === 0 ? NaN : -Math.log(grid.sigmas[i - 1]);
        const h = -Math.log(sp) - lambda, r = (lambda - lambdaLast) / h;
        out.push({ alpha, sigmaVp: s * alpha, ratio: sp / s * alphaPrev / alpha, phi: alphaPrev * Math.expm1(-h),
          halfOverR: 0.5 / r, last: sp === 0 });
      }
    }
    return out.map((c) => Object.fromEntries(Object.entries(c).map(([k, v]) => [k, typeof v === "number" ? f(v) : v])));
  }
  function ddimUpdate(x, eps, c) {  // x0 = (x - sqrt(1 - a) eps) / sqrt(a); x' = sqrt(a') x0 + sqrt(1 - a') eps
    return x.map((xi, k) => {
      const x0 = f(f(xi - f(c.sqrtOneMinus * eps[k])) / c.sqrtAlphaBar);
      return f(f(c.sqrtAlphaBarPrev * x0) + f(c.coefEps * eps[k]));
    });
  }
  function eulerAncestralUpdate(x, eps, c, noise) {  // in x_sigma = x / sqrt(alpha_bar): down to sigma_down, noise up
    return x.map((xi, k) => {
      const xs = f(xi / c.scale), x0 = f(xs - f(c.sigma * eps[k]));
      const d = f(f(xs - x0) / c.sigma);
      const xsPrev = f(f(xs + f(c.dt * d)) + f(c.sigmaUp * noise[k]));
      return f(xsPrev * c.scalePrev);
    });
  }
  function dpmUpdate(x, eps, c, state) {  // D = x0 + (x0 - x0_last) / (2 r); x' = ratio x - phi D
    const x0 = x.map((xi, k) => f(f(xi - f(c.sigmaVp * eps[k])) / c.alpha));
    const last = state.x0Last;
    state.x0Last = x0;
    if (c.last) return x0;
    return x.map((xi, k) => {
      const D = last === null ? x0[k] : f(x0[k] + f(c.halfOverR * f(x0[k] - last[k])));
      return f(f(c.ratio * xi) - f(c.phi * D));
    });
  }

  // ---- the model: three ONNX sessions ---------------------------------------------------------
  const models = {};
  function ortReady(ortUrl) {
    if (typeof ort === "undefined") {
      throw new Error(`onnxruntime-web did not load (expected at ${ortUrl}ort.wasm.min.js; run make vendor)`);
    }
    ort.env.wasm.numThreads = 1;  // a page without cross-origin isolation has no threads
    ort.env.wasm.wasmPaths = ortUrl;
    return ort;
  }
  async function fetchJson(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }
  function load(modelUrl = MODEL_URL, ortUrl = DEFAULT_ORT_URL) {
    modelUrl = new URL(modelUrl, document.baseURI).href;
    if (!models[modelUrl]) {
      models[modelUrl] = loadModel(modelUrl, new URL(ortUrl, document.baseURI).href)
        .catch((err) => { delete models[modelUrl]; throw err; });  // a failed load may be retried
    }
    return models[modelUrl];
  }
  async function loadModel(modelUrl, ortUrl) {
    const start = performance.now();
    const rt = ortReady(ortUrl);
    const config = await fetchJson(modelUrl + "config.json");
    const vocab = await fetchJson(modelUrl + config.files.vocab);
    const options = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
    const session = (name) => rt.InferenceSession.create(modelUrl + config.files[name], options);
    const [text, unet, vae] = await Promise.all([session("text_encoder"), session("unet"), session("vae_decoder")]);
    const ab = config.schedule.alphas_cumprod;
    config.schedule.sigmas = ab.map((a) => Math.sqrt((1 - a) / a));  // sigma_t = sqrt((1 - alpha_bar) / alpha_bar)
    return { config, vocab, text, unet, vae, loadMs: performance.now() - start };
  }

  // ---- one image ------------------------------------------------------------------------------
  function checkOptions(o, config) {  // the pipeline's checks, in its words
    const sampler = SAMPLERS[o.sampler] || (Object.values(SAMPLERS).includes(o.sampler) ? o.sampler : null);
    const T = config.schedule.num_train_timesteps;
    if (!sampler) throw new Error(`sampler must be one of ${Object.keys(SAMPLERS).join(", ")}, got ${o.sampler}`);
    if (!(Number.isInteger(o.steps) && o.steps >= 1 && o.steps <= T)) {
      throw new Error(`steps must be an integer between 1 and ${T}, got ${o.steps}`);
    }
    if (!(Number.isFinite(o.guidance) && o.guidance >= 0)) {
      throw new Error(`guidance scale must be a number >= 0, got ${o.guidance}`);
    }
    new TorchGenerator(o.seed);  // checks the seed
    return sampler;
  }
  async function encode(model, prompts) {  // (B, 77) ids -> (B, 77, D_c) token states
    const ids = BigInt64Array.from(prompts.flatMap((p) => tokenize(p, model.vocab)), BigInt);
    const out = await model.text.run({ ids: new ort.Tensor("int64", ids, [prompts.length, 77]) });
    return out.states;
  }
  async function guidedEps(model, x, t, states, s) {  // guidance.CFGDenoiser: one call on 2B, or one on B if s = 1
    const B = s === 1 ? 1 : 2, shape = model.config.latent_shape;
    const xs = new Float32Array(B * x.length);
    for (let b = 0; b < B; b++) xs.set(x, b * x.length);
    const feeds = { x: new ort.Tensor("float32", xs, [B, ...shape]), context: states,
      t: new ort.Tensor("float32", new Float32Array(B).fill(t), [B]) };
    const eps = (await model.unet.run(feeds)).eps.data;  // (B, 4, 8, 8): cond first, then uncond
    if (B === 1) return eps.slice(0, x.length);
    const n = x.length, sf = f(s);
    return x.map((_, k) => f(eps[n + k] + f(sf * f(eps[k] - eps[n + k]))));  // eps_u + s (eps_c - eps_u)
  }
  async function generate(o = {}) {
    const model = await load(o.model || MODEL_URL);
    const opts = { ...model.config.defaults, ...o };
    const sampler = checkOptions(opts, model.config);
    const start = performance.now();
    const states = await encode(model, opts.guidance === 1 ? [opts.prompt] : [opts.prompt, ""]);
    const schedule = model.config.schedule, grid = makeGrid(sampler, opts.steps, schedule);
    const coefficients = prepare(sampler, grid, schedule);
    const generator = new TorchGenerator(opts.seed), n = model.config.latent_shape.reduce((a, b) => a * b);
    let x = generator.randn(n);  // x_T ~ N(0, I), in the DDPM scale
    if (sampler === "euler_a") {  // samplers.init_noise_scale: sigma_max / sqrt(1 + sigma_max^2)
      const scale = f(grid.sigmas[0] * vpScale(grid.sigmas[0]));
      x = x.map((v) => f(v * scale));
    }
    const state = { x0Last: null };
    for (let i = 0; i < grid.timesteps.length; i++) {
      const eps = await guidedEps(model, x, grid.timesteps[i], states, opts.guidance);
      if (sampler === "ddim") x = ddimUpdate(x, eps, coefficients[i]);
      else if (sampler === "euler_a") x = eulerAncestralUpdate(x, eps, coefficients[i], generator.randn(n));
      else x = dpmUpdate(x, eps, coefficients[i], state);
    }
    const z = new ort.Tensor("float32", x, [1, ...model.config.latent_shape]);
    const images = (await model.vae.run({ z })).images.data;  // (1, 3, 32, 32) in [0, 1]
    const size = model.config.image_size, HW = size * size, pixels = new Uint8ClampedArray(HW * 3);
    for (let c = 0; c < 3; c++) {
      for (let p = 0; p < HW; p++) pixels[p * 3 + c] = images[c * HW + p] * 255;  // rounds half to even, as numpy
    }
    return { pixels, width: size, height: size, ms: performance.now() - start, latents: x };
  }

  // ---- the panel ------------------------------------------------------------------------------
  const CSS = `.dn-sd-panel{border:1px solid #ccc;border-radius:6px;padding:12px;margin:1em 0;font:14px/1.4 sans-serif}
.dn-sd-panel label{display:inline-block;margin:0 12px 8px 0}.dn-sd-panel input[type=text]{width:26em}
.dn-sd-panel input[type=number]{width:5em}.dn-sd-canvas{width:256px;height:256px;image-rendering:pixelated;
border:1px solid #ddd;display:block;margin:8px 0;background:#f4f4f4}.dn-sd-error{color:#b00020}`;
  const PANEL_DEFAULTS = { prompt: "a small red circle on the left", sampler: "DPM++ 2M", steps: 25, guidance: 4, seed: 0 };
  function controls(d) {
    const field = (label, html) => `<label>${label} ${html}</label>`;
    const options = Object.keys(SAMPLERS).map((s) => `<option${s === d.sampler ? " selected" : ""}>${s}</option>`);
    return field("Caption", `<input type="text" class="dn-sd-prompt" value="${d.prompt}">`) + "<br>" +
      field("Sampler", `<select class="dn-sd-sampler">${options.join("")}</select>`) +
      field("Steps", `<input type="number" class="dn-sd-steps" min="1" max="200" value="${d.steps}">`) +
      field("Guidance", `<input type="number" class="dn-sd-guidance" min="0" max="20" step="0.5" value="${d.guidance}">`) +
      field("Seed", `<input type="number" class="dn-sd-seed" min="0" value="${d.seed}">`) +
      `<button type="button" class="dn-sd-generate">Generate</button>` +
      `<canvas class="dn-sd-canvas" width="32" height="32"></canvas><div class="dn-sd-status">Press Generate: the ` +
      `model (16 MB) and onnxruntime (14 MB) load once, then the picture is computed in this browser, no server.</div>`;
  }
  function build(panel) {
    panel.innerHTML = controls(PANEL_DEFAULTS);
    const q = (name) => panel.querySelector(".dn-sd-" + name), button = q("generate"), status = q("status");
    const modelUrl = panel.dataset.model || MODEL_URL;
    button.addEventListener("click", async () => {
      button.disabled = true;
      status.className = "dn-sd-status";
      status.textContent = "working...";
      try {
        const model = await load(modelUrl, panel.dataset.ort || DEFAULT_ORT_URL);
        const o = { prompt: q("prompt").value, sampler: q("sampler").value, steps: Number(q("steps").value),
          guidance: Number(q("guidance").value), seed: Number(q("seed").value), model: modelUrl };
        const r = await generate(o);
        draw(q("canvas"), r);
        status.textContent = `${Math.round(r.ms)} ms in this browser (${o.sampler}, ${o.steps} steps, guidance ` +
          `${o.guidance}, seed ${o.seed}; onnxruntime-web, WebAssembly, one thread; model loaded in ` +
          `${Math.round(model.loadMs)} ms)`;
        status.dataset.ms = String(r.ms);
      } catch (err) {
        status.className = "dn-sd-status dn-sd-error";
        status.textContent = String(err && err.message ? err.message : err);
      } finally {
        button.disabled = false;
      }
    });
  }
  function draw(canvas, r) {
    const rgba = new Uint8ClampedArray(r.width * r.height * 4);
    for (let p = 0; p < r.width * r.height; p++) {
      rgba.set(r.pixels.subarray(p * 3, p * 3 + 3), p * 4);
      rgba[p * 4 + 3] = 255;
    }
    canvas.getContext("2d").putImageData(new ImageData(rgba, r.width, r.height), 0, 0);
  }
  function scan() {
    if (!document.getElementById("dn-sd-style")) {
      const style = document.createElement("style");
      style.id = "dn-sd-style";
      style.textContent = CSS;
      document.head.appendChild(style);
    }
    for (const panel of document.querySelectorAll(".dn-sd-panel:not([data-ready])")) {
      panel.dataset.ready = "1";
      if (location.protocol === "file:") {
        panel.innerHTML = `<p class="dn-sd-fallback">This page was opened from disk: the model runs when the book is ` +
          `served over http (<code>make serve</code>, then open the page at http://127.0.0.1:8000/).</p>`;
      } else build(panel);
    }
  }
  window.diffusionNotesSD = { load, generate, tokenize, randn, TorchGenerator, makeGrid, unknownWordMessage, scan,
    modelUrl: MODEL_URL };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", scan);
  else scan();
})();
