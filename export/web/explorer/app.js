// vaekit latent-space explorer: the decoder (and encoder) run in this browser with ONNX Runtime Web.
// Test hook: window.vaekit.ready (a Promise), window.vaekit.decode(z, n) and window.vaekit.encode(x, n),
// flat Float32Arrays in and out, exactly the numbers the graphs compute (no clipping, no rounding).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const GRID = 8; // samples per grid row; the grid holds GRID * GRID
const STEPS = 10; // images in the interpolation strip
const SLIDERS = 8; // top latent dimensions by KL that get a slider
const SPAN = 3; // sliders cover [-3, 3] prior standard deviations

let ort = null;
let model = null;
const sessions = {};
let queue = Promise.resolve(); // one run at a time per page: a session cannot run two inputs at once
let samples = null; // Float32Array of GRID * GRID latents
let base = null; // the latent the sliders edit
let settle = null;
const ready = new Promise((resolve, reject) => { settle = { resolve, reject }; });
ready.catch(() => {}); // the page shows the error itself; a test awaiting `ready` still sees it
window.vaekit = { ready, decode, encode, backend: null, reason: '', threads: 1, latencyMs: null, model: null };

function fail(message) {
  $('error').textContent = message;
  $('error').hidden = false;
  $('status').textContent = 'failed';
}

function serial(run) {
  const next = queue.then(run);
  queue = next.catch(() => {});
  return next;
}

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

async function webgpuReason() {
  if (params.get('backend') === 'wasm') return 'wasm requested';
  if (!('gpu' in navigator)) return 'this browser has no WebGPU';
  try {
    return (await navigator.gpu.requestAdapter()) ? '' : 'no WebGPU adapter here';
  } catch (error) {
    return `WebGPU adapter: ${error.message}`;
  }
}

async function runtime(provider) {
  const entry = model.runtime.entries[provider];
  try {
    ort = await import(`./${entry}`);
  } catch (error) {
    throw new Error(`cannot load ONNX Runtime Web (${entry}): ${error.message}`);
  }
  ort.env.wasm.wasmPaths = new URL('./', location.href).href;
  const threads = Number(params.get('threads')) || navigator.hardwareConcurrency || 1;
  ort.env.wasm.numThreads = self.crossOriginIsolated ? threads : 1;
  window.vaekit.threads = ort.env.wasm.numThreads;
}

function create(role, provider) {
  const options = { executionProviders: [provider], graphOptimizationLevel: 'all' };
  return ort.InferenceSession.create(model.graphs[role], options);
}

async function openDecoder() {
  // WebGPU where the browser has an adapter (its own build); else, or when it fails, the plain wasm build
  let reason = await webgpuReason();
  if (!reason) {
    try {
      await runtime('webgpu');
      sessions.decoder = await create('decoder', 'webgpu');
      return ['webgpu', ''];
    } catch (error) {
      reason = `WebGPU failed: ${error.message}`;
    }
  }
  await runtime('wasm');
  try {
    sessions.decoder = await create('decoder', 'wasm');
  } catch (error) {
    throw new Error(`cannot load ${model.graphs.decoder}: ${error.message}`);
  }
  return ['wasm', reason];
}

async function run(role, input, n, rowSize, outSizes) {
  const session = sessions[role];
  const outs = outSizes.map((size) => new Float32Array(n * size));
  const inputShape = role === 'decoder' ? [model.latent_dim] : model.image_shape;
  for (let i = 0; i < n; i += model.max_batch) {
    const m = Math.min(model.max_batch, n - i);
    const tensor = new ort.Tensor('float32', input.slice(i * rowSize, (i + m) * rowSize), [m, ...inputShape]);
    const result = await session.run({ [model.inputs[role]]: tensor });
    model.outputs[role].forEach((name, k) => outs[k].set(result[name].data, i * outSizes[k]));
  }
  return outs;
}

function checked(array, n, rowSize, what) {
  if (!(array instanceof Float32Array)) throw new Error(`${what} must be a Float32Array`);
  if (!Number.isInteger(n) || n < 1 || array.length !== n * rowSize) {
    throw new Error(`${what} must hold n * ${rowSize} values, got ${array.length} for n = ${n}`);
  }
  return array;
}

const imageSize = () => model.image_shape.reduce((a, b) => a * b, 1);

async function decode(z, n) {
  await ready;
  checked(z, n, model.latent_dim, 'z');
  return serial(async () => (await run('decoder', z, n, model.latent_dim, [imageSize()]))[0]);
}

async function encode(x, n) {
  await ready;
  if (!model.graphs.encoder) throw new Error('this bundle has no encoder');
  checked(x, n, imageSize(), 'images');
  return serial(async () => {
    sessions.encoder ??= await create('encoder', window.vaekit.backend);
    return run('encoder', x, n, imageSize(), [model.latent_dim, model.latent_dim]);
  });
}

// --- pictures ------------------------------------------------------------------------------------------

function draw(canvas, images, count, cols) {
  const [c, h, w] = model.image_shape;
  const [lo, hi] = model.value_range;
  const rows = Math.ceil(count / cols);
  canvas.width = cols * w;
  canvas.height = rows * h;
  const ctx = canvas.getContext('2d');
  const pixels = ctx.createImageData(canvas.width, canvas.height);
  for (let k = 0; k < count; k++) {
    const x0 = (k % cols) * w, y0 = Math.floor(k / cols) * h, at = k * c * h * w;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const p = 4 * ((y0 + y) * canvas.width + x0 + x);
        for (let ch = 0; ch < 3; ch++) {
          const v = images[at + (c === 3 ? ch : 0) * h * w + y * w + x];
          pixels.data[p + ch] = Math.round((255 * (v - lo)) / (hi - lo));
        }
        pixels.data[p + 3] = 255;
      }
    }
  }
  ctx.putImageData(pixels, 0, 0);
}

function normals(seed, count) {
  // mulberry32 + Box-Muller: the same seed gives the same grid in every browser
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) out[i] = Math.sqrt(-2 * Math.log(1 - uniform())) * Math.cos(2 * Math.PI * uniform());
  return out;
}

const latent = (i) => samples.slice(i * model.latent_dim, (i + 1) * model.latent_dim);

function slerp(a, b, t) {
  const dot = a.reduce((s, v, i) => s + v * b[i], 0);
  const norm = Math.hypot(...a) * Math.hypot(...b);
  const omega = Math.acos(Math.min(1, Math.max(-1, dot / (norm || 1))));
  if (omega < 1e-6) return a.map((v, i) => (1 - t) * v + t * b[i]);
  return a.map((v, i) => (Math.sin((1 - t) * omega) * v + Math.sin(t * omega) * b[i]) / Math.sin(omega));
}

async function timed(n, z) {
  const t0 = performance.now();
  const images = await decode(z, n);
  return [images, performance.now() - t0];
}

async function showGrid() {
  const count = GRID * GRID;
  samples = normals(Number($('seed').value) || 0, count * model.latent_dim);
  const [images, ms] = await timed(count, samples);
  draw($('grid'), images, count, GRID);
  $('grid-time').textContent = `${count} samples decoded in ${ms.toFixed(1)} ms`;
  await explore(latent(0));
  await showStrip();
}

async function showSingle() {
  const [images, ms] = await timed(1, base);
  draw($('single'), images, 1, 1);
  $('single-time').textContent = `one image decoded in ${ms.toFixed(2)} ms`;
}

async function explore(z) {
  base = Float32Array.from(z);
  const box = $('sliders');
  box.replaceChildren();
  for (const d of model.dims_by_kl.slice(0, SLIDERS)) {
    const slider = Object.assign(document.createElement('input'), { type: 'range', min: -SPAN, max: SPAN, step: 0.05 });
    slider.value = base[d];
    const value = document.createElement('span');
    value.textContent = base[d].toFixed(2);
    let pending = false;
    slider.addEventListener('input', () => {
      base[d] = Number(slider.value);
      value.textContent = base[d].toFixed(2);
      if (!pending) {
        pending = true;
        requestAnimationFrame(() => showSingle().catch(report).finally(() => { pending = false; }));
      }
    });
    const kl = model.kl ? ` (KL ${model.kl[d].toPrecision(2)})` : '';
    box.append(Object.assign(document.createElement('span'), { textContent: `z[${d}]${kl}` }), slider, value);
  }
  await showSingle();
}

async function showStrip() {
  const count = GRID * GRID;
  const pick = (id) => Math.min(count - 1, Math.max(0, Number($(id).value) || 0));
  const a = latent(pick('from')), b = latent(pick('to'));
  const z = new Float32Array(STEPS * model.latent_dim);
  for (let k = 0; k < STEPS; k++) z.set(slerp(a, b, k / (STEPS - 1)), k * model.latent_dim);
  draw($('strip'), await decode(z, STEPS), STEPS, STEPS);
}

async function reconstruct(file) {
  const [c, h, w] = model.image_shape;
  const [lo, hi] = model.value_range;
  const canvas = Object.assign(document.createElement('canvas'), { width: w, height: h });
  const ctx = canvas.getContext('2d');
  ctx.drawImage(await createImageBitmap(file), 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const x = new Float32Array(c * h * w);
  for (let p = 0; p < h * w; p++) {
    const rgb = [rgba[4 * p], rgba[4 * p + 1], rgba[4 * p + 2]];
    const channels = c === 3 ? rgb : [0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]];
    channels.forEach((v, ch) => { x[ch * h * w + p] = lo + (v / 255) * (hi - lo); });
  }
  draw($('input'), x, 1, 1);
  const [mu] = await encode(x, 1);
  draw($('recon'), await decode(mu, 1), 1, 1);
  await explore(mu);
}

function report(error) {
  fail(`Error: ${error.message || error}`);
}

function wire() {
  $('seed').addEventListener('change', () => showGrid().catch(report));
  $('reseed').addEventListener('click', () => {
    $('seed').value = Math.floor(Math.random() * 1e6);
    showGrid().catch(report);
  });
  for (const id of ['from', 'to']) $(id).addEventListener('change', () => showStrip().catch(report));
  $('grid').addEventListener('click', (event) => {
    const rect = $('grid').getBoundingClientRect();
    const col = Math.floor(((event.clientX - rect.left) / rect.width) * GRID);
    const row = Math.floor(((event.clientY - rect.top) / rect.height) * GRID);
    const index = Math.min(GRID * GRID - 1, Math.max(0, row * GRID + col));
    $(event.shiftKey ? 'to' : 'from').value = index;
    (event.shiftKey ? Promise.resolve() : explore(latent(index))).then(showStrip).catch(report);
  });
  const drop = $('drop');
  if (!model.graphs.encoder) drop.textContent = 'this bundle has no encoder: reconstruction is off';
  drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    if (event.dataTransfer.files[0]) reconstruct(event.dataTransfer.files[0]).catch(report);
  });
  $('file').addEventListener('change', () => $('file').files[0] && reconstruct($('file').files[0]).catch(report));
}

async function latency() {
  // median of a few single-latent decodes after one warm-up run: what a slider move costs
  const z = new Float32Array(model.latent_dim);
  await decode(z, 1);
  const times = [];
  for (let i = 0; i < 7; i++) times.push((await timed(1, z))[1]);
  return times.sort((a, b) => a - b)[3];
}

async function main() {
  model = await fetchJson('model.json');
  window.vaekit.model = model;
  [window.vaekit.backend, window.vaekit.reason] = await openDecoder();
  settle.resolve();
  wire();
  await showGrid();
  window.vaekit.latencyMs = await latency();
  const [c, h, w] = model.image_shape;
  const why = window.vaekit.reason ? ` (not WebGPU: ${window.vaekit.reason})` : '';
  $('status').textContent = `${window.vaekit.backend}${why} · decode latency ${window.vaekit.latencyMs.toFixed(2)} ms per image`;
  $('facts').textContent = `latent_dim ${model.latent_dim} · image ${c}×${h}×${w} · ` +
    `ONNX Runtime Web ${model.runtime.version} · ${ort.env.wasm.numThreads} wasm thread(s)` +
    (self.crossOriginIsolated ? '' : ' (not cross-origin isolated: one thread)');
  document.body.dataset.ready = 'yes';
}

window.addEventListener('unhandledrejection', (event) => report(event.reason));
main().catch((error) => {
  report(error);
  settle.reject(error);
});
