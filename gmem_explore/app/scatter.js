// The Bank tab's map: gr.HTML's js_on_load (element, trigger, props, server, watch in scope), written for
// scatter.py, which describes the data. Raw WebGL (2, else 1): one gl.POINTS draw of every point from uint16 x, y
// and a uint8 palette index; a 2-D canvas where WebGL is missing or runs on the CPU (see the renderer's note).
// Nothing is loaded from a network.
// World space: the map's bounding box scaled so its longer side is 1 (aspect kept); view = centre + pixels per unit.
const root = element.querySelector('.gm-map'), stage = root.querySelector('.gm-stage');
const glCanvas = root.querySelector('.gm-gl'), over = root.querySelector('.gm-over'), ov = over.getContext('2d');
const tip = root.querySelector('.gm-tip'), tipImg = tip.querySelector('img'), tipText = tip.querySelector('span');
const statusEl = root.querySelector('.gm-status'), titleEl = root.querySelector('.gm-title');
const legendEl = root.querySelector('.gm-legend'), lassoBtn = root.querySelector('.gm-lasso');
const marks = (window.gmemMapMarks = window.gmemMapMarks || {});
const Q = 65535, PICK_PX = 7, HOVER_MS = 150, FADED = 0.12;
const S = { n: 0, qx: null, qy: null, ci: null, rows: null, inverse: null, header: null, token: null, grid: null,
  ax: 1, ay: 1, cx: 0.5, cy: 0.5, k: 1, W: 0, H: 0, dpr: 1, fitted: false, painted: false, frame: 0,
  selection: null, mask: null, rings: null, hover: -1, drag: null, lasso: false, loading: null };

// ---- renderer ----------------------------------------------------------------------------------------------------
// WebGL where a GPU draws it. A software WebGL (SwiftShader, llvmpipe: a browser without a GPU) draws points as
// triangles on the CPU, about 1 µs each (1.28M points: 0.8-1.3 s a frame, measured in headless chromium), while
// writing them into an ImageData takes milliseconds: there the 2-D canvas draws. props.renderer or ?gmem_map=
// in the page's address forces one ('webgl' or '2d'; benchmarks/map_paint.py compares both).
function softwareGL() {
  try {
    const probe = document.createElement('canvas'), g = probe.getContext('webgl2') || probe.getContext('webgl');
    if (!g) return true;
    const info = g.getExtension('WEBGL_debug_renderer_info');
    const name = info ? String(g.getParameter(info.UNMASKED_RENDERER_WEBGL)) : '';
    const lose = g.getExtension('WEBGL_lose_context'); if (lose) lose.loseContext();
    return /swiftshader|llvmpipe|softpipe|software/i.test(name);
  } catch (e) { return false; }
}
const asked = new URLSearchParams(location.search).get('gmem_map') || props.renderer || 'auto';
const wantGL = asked === 'webgl' || (asked !== '2d' && !softwareGL());
const ctxOpts = { antialias: false, premultipliedAlpha: true, alpha: false };
const gl = wantGL ? (glCanvas.getContext('webgl2', ctxOpts) || glCanvas.getContext('webgl', ctxOpts)) : null;
const flat = gl ? null : glCanvas.getContext('2d');
let prog = null, loc = {}, buf = {}, palTex = null, palRGB = new Uint8Array(256 * 4);
if (gl) {
  const vs = `attribute float a_x, a_y, a_c, a_s;
    uniform vec2 u_aspect, u_center, u_scale; uniform float u_size, u_fade;
    varying float v_c, v_a;
    void main() {
      vec2 w = vec2(a_x, a_y) * u_aspect;
      gl_Position = vec4((w - u_center) * u_scale, 0.0, 1.0);
      gl_PointSize = u_size; v_c = a_c; v_a = (u_fade > 0.5 && a_s < 0.5) ? ${FADED} : 1.0;
    }`;
  const fs = `precision mediump float; uniform sampler2D u_pal; uniform float u_alpha, u_round; varying float v_c, v_a;
    void main() {
      if (u_round > 0.5) { vec2 d = gl_PointCoord - 0.5; if (dot(d, d) > 0.25) discard; }
      vec4 c = texture2D(u_pal, vec2((v_c + 0.5) / 256.0, 0.5)); float a = u_alpha * v_a;
      gl_FragColor = vec4(c.rgb * a, a);
    }`;
  const shader = (type, src) => { const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s)); return s; };
  prog = gl.createProgram();
  gl.attachShader(prog, shader(gl.VERTEX_SHADER, vs)); gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, fs));
  ['a_x', 'a_y', 'a_c', 'a_s'].forEach((a, i) => gl.bindAttribLocation(prog, i, a));
  gl.linkProgram(prog);
  for (const u of ['u_aspect', 'u_center', 'u_scale', 'u_size', 'u_fade', 'u_pal', 'u_alpha', 'u_round'])
    loc[u] = gl.getUniformLocation(prog, u);
  for (const b of ['x', 'y', 'c', 's']) buf[b] = gl.createBuffer();
  palTex = gl.createTexture();
}

function upload() {
  if (!gl) return;
  const put = (b, data) => { gl.bindBuffer(gl.ARRAY_BUFFER, buf[b]); gl.bufferData(gl.ARRAY_BUFFER, data, gl.STATIC_DRAW); };
  put('x', S.qx); put('y', S.qy); put('c', S.ci);
  gl.bindTexture(gl.TEXTURE_2D, palTex);
  gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, 256, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, palRGB);
  for (const p of [gl.TEXTURE_MIN_FILTER, gl.TEXTURE_MAG_FILTER]) gl.texParameteri(gl.TEXTURE_2D, p, gl.NEAREST);
  for (const p of [gl.TEXTURE_WRAP_S, gl.TEXTURE_WRAP_T]) gl.texParameteri(gl.TEXTURE_2D, p, gl.CLAMP_TO_EDGE);
}

function pointSize() {  // big dots for a small bank, specks for a million rows; they grow as you zoom in
  const base = Math.min(9, Math.max(1.5, 0.9 * Math.sqrt(S.W * S.H / Math.max(S.n, 1))));
  return Math.min(16, base * Math.sqrt(Math.max(1, S.k / S.fitK)));
}

function drawGL() {
  gl.viewport(0, 0, glCanvas.width, glCanvas.height);
  gl.clearColor(1, 1, 1, 1); gl.clear(gl.COLOR_BUFFER_BIT);
  if (!S.n) return;
  gl.useProgram(prog); gl.enable(gl.BLEND); gl.blendFunc(gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
  const attr = (i, b, type, norm) => { gl.bindBuffer(gl.ARRAY_BUFFER, buf[b]); gl.enableVertexAttribArray(i);
    gl.vertexAttribPointer(i, 1, type, norm, 0, 0); };
  attr(0, 'x', gl.UNSIGNED_SHORT, true); attr(1, 'y', gl.UNSIGNED_SHORT, true); attr(2, 'c', gl.UNSIGNED_BYTE, false);
  if (S.mask) attr(3, 's', gl.UNSIGNED_BYTE, false); else { gl.disableVertexAttribArray(3); gl.vertexAttrib1f(3, 1); }
  const size = pointSize() * S.dpr;
  gl.uniform2f(loc.u_aspect, S.ax, S.ay); gl.uniform2f(loc.u_center, S.cx, S.cy);
  gl.uniform2f(loc.u_scale, 2 * S.k / S.W, 2 * S.k / S.H); gl.uniform1f(loc.u_size, size);
  gl.uniform1f(loc.u_fade, S.mask ? 1 : 0); gl.uniform1f(loc.u_alpha, S.n > 100000 ? 0.55 : 0.85);
  gl.uniform1f(loc.u_round, size >= 3 ? 1 : 0);
  gl.activeTexture(gl.TEXTURE0); gl.bindTexture(gl.TEXTURE_2D, palTex); gl.uniform1i(loc.u_pal, 0);
  gl.drawArrays(gl.POINTS, 0, S.n);
}

function draw2D() {  // the CPU path: small maps as round dots, large ones as pixels written into an ImageData
  const w = glCanvas.width, h = glCanvas.height, dpr = S.dpr, alpha = S.n > 100000 ? 0.55 : 0.85;
  const fx = S.k * dpr * S.ax / Q, ox = (S.W / 2 - S.cx * S.k) * dpr;
  const fy = -S.k * dpr * S.ay / Q, oy = (S.H / 2 + S.cy * S.k) * dpr;
  if (S.n <= 20000) {
    flat.setTransform(1, 0, 0, 1, 0, 0); flat.fillStyle = '#fff'; flat.fillRect(0, 0, w, h);
    const r = pointSize() * dpr / 2;
    for (let i = 0; i < S.n; i++) {
      const c = S.ci[i] * 4;
      flat.globalAlpha = alpha * (S.mask && !S.mask[i] ? FADED : 1);
      flat.fillStyle = `rgb(${palRGB[c]},${palRGB[c + 1]},${palRGB[c + 2]})`;
      flat.beginPath(); flat.arc(S.qx[i] * fx + ox, S.qy[i] * fy + oy, r, 0, 2 * Math.PI); flat.fill();
    }
    flat.globalAlpha = 1;
    return;
  }
  if (!S.img || S.img.width !== w || S.img.height !== h) S.img = flat.createImageData(w, h);
  const d = S.img.data, size = Math.max(1, Math.round(pointSize() * dpr * 0.7));
  d.fill(255);
  for (let i = 0; i < S.n; i++) {
    const px = Math.floor(S.qx[i] * fx + ox), py = Math.floor(S.qy[i] * fy + oy);
    if (px < 0 || py < 0 || px + size > w || py + size > h) continue;
    const a = S.mask && !S.mask[i] ? alpha * FADED : alpha, c = S.ci[i] * 4;
    const r = palRGB[c], g = palRGB[c + 1], b = palRGB[c + 2];
    for (let y = py; y < py + size; y++) for (let o = (y * w + px) * 4, e = o + size * 4; o < e; o += 4) {
      d[o] += (r - d[o]) * a; d[o + 1] += (g - d[o + 1]) * a; d[o + 2] += (b - d[o + 2]) * a;
    }
  }
  flat.putImageData(S.img, 0, 0);
}

// ---- coordinates -------------------------------------------------------------------------------------------------
function screenOf(i) {
  return [(S.qx[i] / Q * S.ax - S.cx) * S.k + S.W / 2, S.H / 2 - (S.qy[i] / Q * S.ay - S.cy) * S.k];
}
const toWorld = (px, py) => [(px - S.W / 2) / S.k + S.cx, (S.H / 2 - py) / S.k + S.cy];
const worldToScreen = (wx, wy) => [(wx - S.cx) * S.k + S.W / 2, S.H / 2 - (wy - S.cy) * S.k];
function toData(wx, wy) {
  const h = S.header;
  return [h.lo[0] + wx / S.ax * h.span[0], h.lo[1] + wy / S.ay * h.span[1]];
}
function fit() {
  S.cx = S.ax / 2; S.cy = S.ay / 2; S.k = S.fitK = 0.92 * Math.min(S.W / S.ax, S.H / S.ay); S.fitted = true;
}
function pointOf(row) {  // the point drawing a bank row, or -1 (a row outside a subsampled map)
  if (!S.header || row === null || row === undefined) return -1;
  if (!S.rows) return row >= 0 && row < S.n ? row : -1;
  if (!S.inverse) {
    let top = 0; for (let i = 0; i < S.n; i++) if (S.rows[i] > top) top = S.rows[i];
    S.inverse = new Int32Array(top + 1).fill(-1);
    for (let i = 0; i < S.n; i++) S.inverse[S.rows[i]] = i;
  }
  return row >= 0 && row < S.inverse.length ? S.inverse[row] : -1;
}
const rowOf = (i) => (S.rows ? S.rows[i] : i);

// ---- nearest point: a grid over the quantised square, built once per map (counting sort) -----------------------
function buildGrid() {
  const n = S.n, G = Math.max(1, Math.min(1024, Math.ceil(Math.sqrt(n / 4))));
  const cell = new Int32Array(n), start = new Int32Array(G * G + 1), order = new Int32Array(n);
  for (let i = 0; i < n; i++) { const c = ((S.qx[i] * G) >>> 16) + G * ((S.qy[i] * G) >>> 16); cell[i] = c; start[c + 1]++; }
  for (let c = 0; c < G * G; c++) start[c + 1] += start[c];
  const fill = start.slice(0, G * G);
  for (let i = 0; i < n; i++) order[fill[cell[i]]++] = i;
  S.grid = { G, start, order };
}
function nearest(px, py, radius) {
  if (!S.n) return -1;
  if (!S.grid) buildGrid();
  const { G, start, order } = S.grid, [wx, wy] = toWorld(px, py), r = radius / S.k;
  const span = (w, a) => [Math.max(0, Math.floor((w - r) / a * G)), Math.min(G - 1, Math.floor((w + r) / a * G))];
  const [x0, x1] = span(wx, S.ax), [y0, y1] = span(wy, S.ay);
  let best = -1, bd = radius * radius;
  for (let cy = y0; cy <= y1; cy++) for (let cx = x0; cx <= x1; cx++) {
    const c = cx + G * cy;
    for (let j = start[c]; j < start[c + 1]; j++) {
      const i = order[j], [sx, sy] = screenOf(i), d = (sx - px) ** 2 + (sy - py) ** 2;
      if (d <= bd) { bd = d; best = i; }
    }
  }
  return best;
}

// ---- overlay: rings, hover, selection ----------------------------------------------------------------------------
function ring(i, radius, colour, width) {
  if (i < 0) return;
  const [x, y] = screenOf(i);
  ov.beginPath(); ov.arc(x, y, radius, 0, 2 * Math.PI); ov.lineWidth = width; ov.strokeStyle = colour; ov.stroke();
}
function outline(points, closed) {
  if (points.length < 2) return;
  ov.beginPath(); points.forEach(([x, y], j) => (j ? ov.lineTo(x, y) : ov.moveTo(x, y)));
  if (closed) ov.closePath();
  ov.setLineDash([5, 4]); ov.lineWidth = 1.5; ov.strokeStyle = '#d62728'; ov.stroke(); ov.setLineDash([]);
}
function drawOverlay() {
  ov.setTransform(S.dpr, 0, 0, S.dpr, 0, 0); ov.clearRect(0, 0, S.W, S.H);
  if (S.selection) outline(S.selection.map(([x, y]) => worldToScreen(x, y)), true);
  if (S.drag && S.drag.mode === 'box') {
    const { x0, y0, x, y } = S.drag; outline([[x0, y0], [x, y0], [x, y], [x0, y]], true);
  }
  if (S.drag && S.drag.mode === 'lasso') outline(S.drag.path, false);
  if (S.rings) {
    for (const r of S.rings.neighbours || []) ring(pointOf(r), 6, '#ff7f0e', 2);
    ring(pointOf(S.rings.row), 9, '#d62728', 2.5);
  }
  ring(S.hover, 5, '#222', 1.5);
}
function draw() {
  S.frame = 0;
  if (!S.W || !S.H) return;
  if (gl) drawGL(); else if (flat) draw2D();
  drawOverlay();
  if (S.n && !S.painted) {  // the first frame with every point: marks for benchmarks/map_paint.py
    S.painted = true;
    settle();
    marks.drawn = performance.now();
    requestAnimationFrame(() => { marks.firstPaint = marks.firstPaint || performance.now(); marks.lastPaint = performance.now(); });
  }
}
const pixel = new Uint8Array(4);
function settle() {  // wait until the frame is drawn: reading a pixel back cannot run before the draw ends
  if (gl) gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, pixel);
}
const redraw = () => { if (!S.frame) S.frame = requestAnimationFrame(draw); };

function resize() {
  const W = stage.clientWidth, H = stage.clientHeight, dpr = window.devicePixelRatio || 1;
  if (!W || !H) return;  // a hidden tab: drawn when shown
  S.W = W; S.H = H; S.dpr = dpr;
  for (const c of [glCanvas, over]) { c.width = Math.round(W * dpr); c.height = Math.round(H * dpr); }
  if (S.n && (!S.fitted || !S.moved)) fit();  // a map not yet panned or zoomed keeps fitting its box
  draw();
}
new ResizeObserver(resize).observe(stage);
