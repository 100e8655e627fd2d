/* diffusion_notes: the book's shipped Stable Diffusion, run in the page with onnxruntime-web.
 *
 * Written out by `python -m diffusion_notes export stable_diffusion --format onnx --out DIR`
 * (src/diffusion_notes/stable_diffusion/web_export.py) next to text_encoder.onnx, unet.onnx,
 * vae_decoder.onnx, vocab.json and config.json (and lcm_unet.onnx, the LCM student, where exported);
 * onnxruntime-web (ort.wasm.min.js) is expected in ../ort/ unless a panel's data-ort says otherwise.
 * Nothing is loaded from outside the site.
 *
 * It follows the Python pipeline step for step (LatentDiffusionPipeline with the same settings):
 *   tokens    the table of vocab.json (web_vocab.py, its Python twin); "" is the unconditional caption
 *   noise     torch's CPU torch.randn: mt19937 + torch's Box-Muller normal_fill (tests/web_noise.py,
 *             its Python twin): seed N here is torch.Generator().manual_seed(N) there, the same draws
 *             in the same order (x_T first, then Euler a's noise after each UNet call)
 *   tables    config.json's sampling (web_export.sampling_table): for each sampler and step count the
 *             page offers, make_grid's timesteps, prepare_step's coefficients, where noise is drawn
 *             and init_noise_scale, all computed in Python; the page computes none of them
 *   steps     foundations/samplers/{ddim,euler,euler_a,dpmpp_2m,lcm}.py: ddim_update, euler_update with
 *             sigma_up, dpmpp_2m_update, lcm_update, each reading its coefficients by name, rounded to
 *             float32 as torch multiplies a float32 tensor by a Python float, each tensor operation
 *             rounded to float32 as torch computes it
 *   guidance  foundations/guidance.py: one UNet call on [x, x] with [cond; uncond] states,
 *             eps = eps_uncond + s (eps_cond - eps_uncond); none when s = 1
 *   LCM       config.lcm: the student's choice ("LCM, 4 steps"); config.unets names the UNet file a
 *             sampler runs (lcm -> lcm_unet.onnx, loaded when first asked for), its noise the same
 *             stream (x_T, then the fresh noise after each step but the last)
 *   speed     each UNet session is opened for one batch size (freeDimensionOverrides on the graphs'
 *             axis B), so onnxruntime folds the shapes; in a cross-origin isolated page (make serve's
 *             headers, or the service worker dn_coi_sw.js a panel's data-coi registers on a static
 *             host) onnxruntime-web runs on min(4, cores) threads (?threads=k asks for k), else on one
 *
 * API (for tests and the benchmark): window.diffusionNotesSD
 *   .load(modelUrl?)                    -> Promise<model>  (cached; default: this script's folder)
 *   .generate({prompt, sampler, steps, guidance, seed, model?})   steps: one of the sampler's tables'
 *                                       (sampler "lcm": the student, steps 1, 2, 4 or 8)
 *                                       -> Promise<{pixels: Uint8ClampedArray (32*32*3 RGB, row
 *                                          major), width, height, ms, latents: Float32Array}>
 *   .tokenize(text, vocab)              -> 77 open_clip ids; throws naming an unknown word
 *   .randn(seed, n)                     -> Float32Array: torch.randn(n, generator=manual_seed(seed))
 *   .threads()                          -> onnxruntime-web's thread count on this page
 *   .TorchGenerator, .table             the pieces, for tests
 */
(function () {
  "use strict";
  if (window.diffusionNotesSD) { window.diffusionNotesSD.scan(); return; }
  const f = Math.fround;
  const SCRIPT_URL = document.currentScript ? document.currentScript.src : location.href;
  const MODEL_URL = new URL("./", SCRIPT_URL).href;
  const DEFAULT_ORT_URL = new URL("../ort/", SCRIPT_URL).href;

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
    const clean = text.trim().split(/\s+/).filter(Boolean).join(" ").toLowerCase()
      .replace(/[.!?]+$/u, "").trimEnd();  // web_vocab.without_final_stop: "a red circle." is the caption
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

  // ---- the sampler's table: config.json's sampling, written by web_export.sampling_table -----
  function stepCounts(config, sampler) {  // the step counts the page has tables for, for this sampler
    return Object.keys(config.sampling.tables[sampler]).map(Number).sort((a, b) => a - b);
  }
  function table(config, sampler, steps) {  // {timesteps, rows, draws_noise, init_noise_scale}
    const sampling = config.sampling, fields = sampling.fields[sampler], counts = stepCounts(config, sampler);
    if (!counts.includes(steps)) {
      throw new Error(`steps must be one of ${counts.join(", ")} (the step counts this page has ` +
        `grids for), got ${steps}`);
    }
    const t = sampling.tables[sampler][String(steps)];
    const rows = t.coefficients.map((row) => Object.fromEntries(fields.map((name, j) =>  // null: not finite
      [name, typeof row[j] === "boolean" ? row[j] : f(row[j] === null ? NaN : row[j])])));  // float32, as torch
    return { ...t, rows };
  }

  // ---- steps: the updates of foundations/samplers/, each rounded to float32 as torch computes it ---
  function ddimUpdate(x, eps, c, noise) {  // x0 = (x - sqrt(1 - a) eps) / sqrt(a); x' = sqrt(a') x0 + coef_eps eps
    return x.map((xi, k) => {
      const x0 = f(f(xi - f(c.sqrt_one_minus_alpha_bar * eps[k])) / c.sqrt_alpha_bar);
      const xPrev = f(f(c.sqrt_alpha_bar_prev * x0) + f(c.coef_eps * eps[k]));
      return noise ? f(xPrev + f(c.std * noise[k])) : xPrev;
    });
  }
  function eulerUpdate(x, eps, c, noise) {  // in x_sigma = x / sqrt(alpha_bar): down to sigma_down, noise up
    return x.map((xi, k) => {
      const xs = f(xi / c.scale), x0 = f(xs - f(c.sigma * eps[k]));
      const d = f(f(xs - x0) / c.sigma);
      const xsPrev = f(xs + f(c.dt * d));
      return f((noise ? f(xsPrev + f(c.sigma_up * noise[k])) : xsPrev) * c.scale_prev);
    });
  }
  function dpmUpdate(x, eps, c, noise, state) {  // D = x0 + (x0 - x0_last) / (2 r); x' = ratio x - phi D
    const x0 = x.map((xi, k) => f(f(xi - f(c.sigma_vp * eps[k])) / c.alpha));
    const last = state.x0Last;
    state.x0Last = x0;
    if (c.last) return x0;
    return x.map((xi, k) => {
      const D = last === null ? x0[k] : f(x0[k] + f(c.half_over_r * f(x0[k] - last[k])));
      return f(f(c.ratio * xi) - f(c.phi * D));
    });
  }
  function lcmUpdate(x, eps, c, noise) {  // x0 = c_out x0_hat + c_skip x; x' = sqrt(a') x0 + sqrt(1 - a') z
    return x.map((xi, k) => {
      const x0Hat = f(f(xi - f(c.sqrt_one_minus_alpha_bar * eps[k])) / c.sqrt_alpha_bar);
      const x0 = f(f(c.c_out * x0Hat) + f(c.c_skip * xi));
      return noise ? f(f(c.sqrt_alpha_bar_prev * x0) + f(c.sqrt_one_minus_alpha_bar_prev * noise[k])) : x0;
    });
  }
  const UPDATES = { ddim: ddimUpdate, euler_a: eulerUpdate, dpmpp_2m: dpmUpdate, lcm: lcmUpdate };

  // ---- threads: several only in a cross-origin isolated page ----------------------------------
  function threads() {
    if (!window.crossOriginIsolated) return 1;  // no SharedArrayBuffer: onnxruntime-web runs on one thread
    const asked = Number(new URLSearchParams(location.search).get("threads"));
    if (Number.isInteger(asked) && asked >= 1) return asked;
    return Math.max(1, Math.min(4, navigator.hardwareConcurrency || 1));
  }
  const LOOPBACK = new Set(["127.0.0.1", "localhost", "[::1]"]);
  const RELOADED = "dn-coi-reloaded";
  function waitActive(worker) {  // resolves when the service worker is active (or after 5 s)
    return new Promise((resolve) => {
      if (!worker || worker.state === "activated") { resolve(); return; }
      const timer = setTimeout(resolve, 5000);
      worker.addEventListener("statechange", () => {
        if (worker.state === "activated" || worker.state === "redundant") { clearTimeout(timer); resolve(); }
      });
    });
  }
  async function isolate(workerUrl, ortUrl) {  // -> true when the page reloads to come back isolated (dn_coi_sw.js)
    if (window.crossOriginIsolated) {
      try { sessionStorage.removeItem(RELOADED); } catch (err) { /* no storage: nothing to forget */ }
      return false;
    }
    const local = LOOPBACK.has(location.hostname) && !new URLSearchParams(location.search).has("coi");
    if (!workerUrl || local || !window.isSecureContext || !("serviceWorker" in navigator)) return false;
    try {  // local: make serve sends the headers itself; ?coi asks for the worker there too (tests)
      const registration = await navigator.serviceWorker.register(workerUrl);
      if (!location.href.startsWith(registration.scope) || !ortUrl.startsWith(registration.scope)) {
        await registration.unregister();  // onnxruntime's thread workers must come through it too, or they fail
        return false;
      }
      if (sessionStorage.getItem(RELOADED)) return false;
      await waitActive(registration.installing || registration.waiting || registration.active);
      sessionStorage.setItem(RELOADED, "1");  // once: a browser that stays unisolated keeps one thread
      location.reload();
      return true;
    } catch (err) {
      return false;  // no service worker here (refused, or not found): one thread
    }
  }

  // ---- the model: ONNX sessions, each UNet's for one batch size --------------------------------
  const models = {}, configs = {};
  function ortReady(ortUrl) {
    if (typeof ort === "undefined") {
      throw new Error(`onnxruntime-web did not load (expected at ${ortUrl}ort.wasm.min.js; run make vendor)`);
    }
    ort.env.wasm.numThreads = threads();
    ort.env.wasm.wasmPaths = ortUrl;
    return ort;
  }
  async function fetchJson(url) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }
  function loadConfig(modelUrl) {  // config.json, fetched once per folder (a failed fetch may be retried)
    if (!configs[modelUrl]) {
      configs[modelUrl] = fetchJson(modelUrl + "config.json").catch((err) => { delete configs[modelUrl]; throw err; });
    }
    return configs[modelUrl];
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
    const config = await loadConfig(modelUrl);
    const vocab = await fetchJson(modelUrl + config.files.vocab);
    const session = (name, B) => rt.InferenceSession.create(modelUrl + config.files[name], {
      executionProviders: ["wasm"], graphOptimizationLevel: "all",
      ...(B ? { freeDimensionOverrides: { [config.batch_axis]: B } } : {}) });  // fixed shapes: folded
    const B = config.defaults.guidance === 1 ? 1 : 2;
    const [text, vae, unet] = await Promise.all([session("text_encoder"), session("vae_decoder", 1),
      session("unet", B)]);
    const model = { config, vocab, text, vae, session, unets: { [`unet:${B}`]: Promise.resolve(unet) } };
    model.loadMs = performance.now() - start;
    return model;
  }
  function unetSession(model, name, B) {  // opened once per file and batch size (the LCM student: when asked)
    const key = `${name}:${B}`;
    if (!model.unets[key]) {
      model.unets[key] = model.session(name, B).catch((err) => { delete model.unets[key]; throw err; });
    }
    return model.unets[key];
  }

  // ---- one image ------------------------------------------------------------------------------
  function samplerNames(config) {  // web-UI name -> ours, as the export wrote them; the student's "lcm" too
    return config.lcm ? { ...config.samplers, [config.lcm.sampler]: config.lcm.sampler } : config.samplers;
  }
  function checkOptions(o, config) {  // the pipeline's checks, in its words; the sampler and its table
    const names = samplerNames(config);
    const sampler = names[o.sampler] || (Object.values(names).includes(o.sampler) ? o.sampler : null);
    if (!sampler) throw new Error(`sampler must be one of ${Object.keys(names).join(", ")}, got ${o.sampler}`);
    const grid = table(config, sampler, o.steps);
    if (!(Number.isFinite(o.guidance) && o.guidance >= 0)) {
      throw new Error(`guidance scale must be a number >= 0, got ${o.guidance}`);
    }
    new TorchGenerator(o.seed);  // checks the seed
    return { sampler, grid };
  }
  async function encode(model, prompts) {  // (B, 77) ids -> (B, 77, D_c) token states
    const ids = BigInt64Array.from(prompts.flatMap((p) => tokenize(p, model.vocab)), BigInt);
    const out = await model.text.run({ ids: new ort.Tensor("int64", ids, [prompts.length, 77]) });
    return out.states;
  }
  async function guidedEps(unet, x, t, states, s, shape) {  // guidance.CFGDenoiser: one call on 2B, or B if s = 1
    const B = s === 1 ? 1 : 2;
    const xs = new Float32Array(B * x.length);
    for (let b = 0; b < B; b++) xs.set(x, b * x.length);
    const feeds = { x: new ort.Tensor("float32", xs, [B, ...shape]), context: states,
      t: new ort.Tensor("float32", new Float32Array(B).fill(t), [B]) };
    const eps = (await unet.run(feeds)).eps.data;  // (B, 4, 8, 8): cond first, then uncond
    if (B === 1) return eps.slice(0, x.length);
    const n = x.length, sf = f(s);
    return x.map((_, k) => f(eps[n + k] + f(sf * f(eps[k] - eps[n + k]))));  // eps_u + s (eps_c - eps_u)
  }
  async function generate(o = {}) {
    const model = await load(o.model || MODEL_URL);
    const opts = { ...model.config.defaults, ...o };
    const { sampler, grid } = checkOptions(opts, model.config), update = UPDATES[sampler];
    const unetName = model.config.unets[sampler] || "unet", shape = model.config.latent_shape;
    const unet = await unetSession(model, unetName, opts.guidance === 1 ? 1 : 2);  // before the clock starts
    const start = performance.now();
    const states = await encode(model, opts.guidance === 1 ? [opts.prompt] : [opts.prompt, ""]);
    const generator = new TorchGenerator(opts.seed), n = model.config.latent_shape.reduce((a, b) => a * b);
    let x = generator.randn(n);  // x_T ~ N(0, I), in the DDPM scale, times init_noise_scale
    if (grid.init_noise_scale !== 1) x = x.map((v) => f(v * f(grid.init_noise_scale)));
    const state = { x0Last: null };
    for (let i = 0; i < grid.timesteps.length; i++) {  // samplers.loop
      const eps = await guidedEps(unet, x, grid.timesteps[i], states, opts.guidance, shape);
      x = update(x, eps, grid.rows[i], grid.draws_noise[i] ? generator.randn(n) : null, state);
      if (opts.onStep) opts.onStep(i + 1, grid.timesteps.length);  // the panel's step counter
    }
    const z = new ort.Tensor("float32", x, [1, ...model.config.latent_shape]);
    const images = (await model.vae.run({ z })).images.data;  // (1, 3, 32, 32) in [0, 1]
    const size = model.config.image_size, HW = size * size, pixels = new Uint8ClampedArray(HW * 3);
    for (let c = 0; c < 3; c++) {
      for (let p = 0; p < HW; p++) pixels[p * 3 + c] = images[c * HW + p] * 255;  // rounds half to even, as numpy
    }
    return { pixels, width: size, height: size, ms: performance.now() - start, latents: x, prompt: opts.prompt,
      threads: threads(), unet: unetName };
  }

  // ---- the panel ------------------------------------------------------------------------------
  const CSS = `.dn-sd-panel{border:1px solid #ccc;border-radius:6px;padding:12px;margin:1em 0;font:14px/1.4 sans-serif}
.dn-sd-panel label{display:inline-block;margin:0 12px 8px 0}.dn-sd-panel input[type=text]{width:26em}
.dn-sd-panel input[type=number]{width:5em}.dn-sd-canvas{width:256px;height:256px;image-rendering:pixelated;
border:1px solid #ddd;display:block;margin:8px 0;background:#f4f4f4}.dn-sd-error{color:#b00020}`;
  const BASE_MODEL = "Stable Diffusion";
  function controls(d, steps, samplers, lcm) {  // d: config.json's defaults; the step counts and samplers with tables
    const field = (label, html) => `<label>${label} ${html}</label>`;
    const menu = (values, value) => values.map((v) => `<option${v === value ? " selected" : ""}>${v}</option>`)
      .join("");
    const models = lcm ? field("Model", `<select class="dn-sd-model" title="${lcm.label}: the LCM student ` +
      `(12 MB, loaded when first picked), ${lcm.steps} steps, guidance ${lcm.guidance}">` +
      `${menu([BASE_MODEL, lcm.label], BASE_MODEL)}</select>`) : "";
    return field("Caption", `<input type="text" class="dn-sd-prompt" value="${d.prompt}">`) + "<br>" + models +
      field("Sampler", `<select class="dn-sd-sampler">${menu(samplers, d.sampler)}</select>`) +
      field("Steps", `<select class="dn-sd-steps" title="the step counts this page stores grids for: ` +
        `${steps.join(", ")}">${menu(steps, d.steps)}</select>`) +
      field("Guidance", `<input type="number" class="dn-sd-guidance" min="0" max="20" step="0.5" value="${d.guidance}">`) +
      field("Seed", `<input type="number" class="dn-sd-seed" min="0" value="${d.seed}">`) +
      `<button type="button" class="dn-sd-generate">Generate</button>` +
      `<canvas class="dn-sd-canvas" width="32" height="32" role="img" aria-label="the picture the model drew">` +
      `</canvas><div class="dn-sd-status" aria-live="polite">Press Generate (or Enter in the caption): the ` +
      `model (16 MB) and onnxruntime (14 MB) load once, then the picture is computed in this browser, no server. ` +
      `Steps: ${steps[0]} to ${steps[steps.length - 1]}, the counts this page stores grids for.</div>` +
      `<div class="dn-sd-times"></div>`;
  }
  function settings(q, config) {  // the panel's fields, or the student's fixed settings where LCM is picked
    const o = { prompt: q("prompt").value, seed: Number(q("seed").value), sampler: q("sampler").value,
      steps: Number(q("steps").value), guidance: Number(q("guidance").value) };
    const lcm = config.lcm, picked = lcm && q("model") && q("model").value === lcm.label;
    return picked ? { ...o, sampler: lcm.sampler, steps: lcm.steps, guidance: lcm.guidance, label: lcm.label, kind: "lcm" }
      : { ...o, label: `${BASE_MODEL}, ${o.sampler}, ${o.steps} steps`, kind: "base" };
  }
  function showTimes(element, times) {  // the last time per image of the base model and of the student, side by side
    element.textContent = "Time per image in this browser: " +
      Object.values(times).map((t) => `${t.label}: ${Math.round(t.ms)} ms`).join("; ");
  }
  async function build(panel) {
    const modelUrl = new URL(panel.dataset.model || MODEL_URL, document.baseURI).href;
    let config;
    try {
      config = await loadConfig(modelUrl);
      panel.innerHTML = controls(config.defaults, config.sampling.steps, Object.keys(config.samplers), config.lcm);
    } catch (err) {
      panel.innerHTML = `<p class="dn-sd-error">The model's files did not load: ${err.message}</p>`;
      return;
    }
    const q = (name) => panel.querySelector(".dn-sd-" + name), button = q("generate"), status = q("status");
    const times = {};
    if (q("model")) {
      q("model").addEventListener("change", () => {  // the student samples with its own settings
        for (const name of ["sampler", "steps", "guidance"]) q(name).disabled = q("model").value !== BASE_MODEL;
      });
    }
    q("prompt").addEventListener("keydown", (event) => {  // Enter in the caption generates, as a form would
      if (event.key === "Enter" && !button.disabled) { event.preventDefault(); button.click(); }
    });
    button.addEventListener("click", async () => {
      button.disabled = true;
      status.className = "dn-sd-status";
      status.textContent = "working...";
      try {
        const model = await load(modelUrl, panel.dataset.ort || DEFAULT_ORT_URL);
        const o = { ...settings(q, config), model: modelUrl,
          onStep: (i, n) => { status.textContent = `step ${i} of ${n}...`; } };
        const r = await generate(o);
        draw(q("canvas"), r);
        status.textContent = `${Math.round(r.ms)} ms in this browser (${o.label}, guidance ${o.guidance}, ` +
          `seed ${o.seed}; onnxruntime-web, WebAssembly, ${r.threads === 1 ? "one thread" : `${r.threads} threads`}; ` +
          `model loaded in ${Math.round(model.loadMs)} ms)`;
        status.dataset.ms = String(r.ms);
        times[o.kind] = { label: o.label, ms: r.ms };
        showTimes(q("times"), times);
      } catch (err) {
        status.className = "dn-sd-status dn-sd-error";
        status.textContent = String(err && err.message ? err.message : err);
        clear(q("canvas"));  // no old picture beside the error: it was not drawn from these settings
      } finally {
        button.disabled = false;
      }
    });
  }
  function clear(canvas) {
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    canvas.setAttribute("aria-label", "no picture");
  }
  function draw(canvas, r) {
    const rgba = new Uint8ClampedArray(r.width * r.height * 4);
    for (let p = 0; p < r.width * r.height; p++) {
      rgba.set(r.pixels.subarray(p * 3, p * 3 + 3), p * 4);
      rgba[p * 4 + 3] = 255;
    }
    canvas.getContext("2d").putImageData(new ImageData(rgba, r.width, r.height), 0, 0);
    canvas.setAttribute("aria-label", `the picture the model drew for "${r.prompt}"`);
  }
  let isolating = null;  // one attempt per page: the service worker named by the first panel's data-coi
  function scan() {
    const panels = [...document.querySelectorAll(".dn-sd-panel:not([data-ready])")];
    if (!panels.length) return;
    const first = panels[0].dataset;  // data-coi: the worker at the site's root ("" for none)
    const worker = "coi" in first ? first.coi : new URL("../../dn_coi_sw.js", SCRIPT_URL).href;
    const ortUrl = new URL(first.ort || DEFAULT_ORT_URL, document.baseURI).href;
    if (!isolating) isolating = location.protocol === "file:" || !worker ? Promise.resolve(false) : isolate(worker, ortUrl);
    isolating.then((reloading) => { if (!reloading) fill(panels); });
  }
  function fill(panels) {
    if (!document.getElementById("dn-sd-style")) {
      const style = document.createElement("style");
      style.id = "dn-sd-style";
      style.textContent = CSS;
      document.head.appendChild(style);
    }
    for (const panel of panels) {
      if (panel.dataset.ready) continue;
      panel.dataset.ready = "1";
      if (location.protocol === "file:") {
        panel.innerHTML = `<p class="dn-sd-fallback">This page was opened from disk: the model runs when the book is ` +
          `served over http (<code>make serve</code>, then open the page at http://127.0.0.1:8000/).</p>`;
      } else build(panel);
    }
  }
  window.diffusionNotesSD = { load, generate, tokenize, randn, TorchGenerator, table, unknownWordMessage, scan,
    threads, modelUrl: MODEL_URL };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", scan);
  else scan();
})();
