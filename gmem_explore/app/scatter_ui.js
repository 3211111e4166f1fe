// The Bank map, part 2 (run after scatter.js, in the same js_on_load scope): the points from the server, legend,
// selections, the hover tooltip, the pointer and wheel, Python's props and the hook for tests and benchmarks.

// ---- data --------------------------------------------------------------------------------------------------------
async function bytesOf(b64) {
  try { return new Uint8Array(await (await fetch('data:application/octet-stream;base64,' + b64)).arrayBuffer()); }
  catch (e) { const s = atob(b64), a = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i); return a; }
}
const status = (text) => { statusEl.textContent = text; };

function showLegend(h) {
  legendEl.replaceChildren();
  const add = (html) => { const s = document.createElement('span'); s.innerHTML = html; legendEl.appendChild(s); };
  const esc = (t) => String(t).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
  for (const e of h.legend || []) add(`<i style="background:${esc(e.colour)}"></i>${esc(e.name)}`);
  if (h.scale) {
    const s = h.scale, fmt = (v) => Number(v).toPrecision(3).replace(/\.?0+$/, '');
    add(`${esc(s.name)}${s.log ? ' (log)' : ''}: ${fmt(s.min)}<span class="gm-scale" style="background:linear-gradient(` +
        `to right, ${s.stops.map(esc).join(', ')})"></span>${fmt(s.max)}`);
  }
  if (h.note) add(`<em>${esc(h.note)}</em>`);
}

// each point's bank row, or null for rows 0..N-1: sent as they are (a subsampled map), or as row order plus the
// `top` rows drawn last (an edited session's moved rows), which scatter.rows_of rebuilds the same way
function rowsOf(points, buffer, start) {
  const n = points.count;
  if (points.rows) return new Int32Array(buffer, start, n);
  if (!points.top) return null;
  const top = new Int32Array(buffer, start, points.top), last = new Uint8Array(n), rows = new Int32Array(n);
  for (let j = 0; j < top.length; j++) last[top[j]] = 1;
  let i = 0;
  for (let r = 0; r < n; r++) if (!last[r]) rows[i++] = r;
  rows.set(top, i);
  return rows;
}

async function load(points) {
  if (!points || !points.token || points.token === S.token || points.token === S.loading) return;
  const token = points.token;
  S.loading = token; marks.requested = performance.now();
  status(`loading ${points.count.toLocaleString()} points…`);
  let b64;
  try { b64 = await server.map_data(token); }
  catch (e) { if (S.loading === token) { S.loading = null; status('this map is no longer on the server: choose the map or colouring again'); } return; }
  if (S.loading !== token) return;  // a newer map was asked for meanwhile
  const bytes = await bytesOf(b64), n = points.count;
  if (S.loading !== token) return;
  marks.decoded = performance.now();
  S.qx = new Uint16Array(bytes.buffer, 0, n); S.qy = new Uint16Array(bytes.buffer, 2 * n, n);
  S.ci = new Uint8Array(bytes.buffer, 4 * n, n);
  S.rows = rowsOf(points, bytes.buffer, 5 * n + ((4 - (5 * n) % 4) % 4));
  S.n = n; S.header = points; S.token = token; S.loading = null;
  S.grid = null; S.inverse = null; S.mask = null; S.selection = null; S.hover = -1; tip.hidden = true;
  const longest = Math.max(points.span[0], points.span[1]);
  S.ax = points.span[0] / longest; S.ay = points.span[1] / longest;
  palRGB.fill(0);
  for (const [i, c] of Object.entries(points.palette))
    for (let k = 0; k < 3; k++) palRGB[Number(i) * 4 + k] = parseInt(c.slice(1 + 2 * k, 3 + 2 * k), 16);
  upload();
  titleEl.textContent = points.title || ''; showLegend(points);
  status(n ? `${n.toLocaleString()} points` : 'no rows to map');
  S.painted = false; S.fitted = false; S.moved = false;
  if (S.W) fit();
  draw();
  setTimeout(() => { if (S.token === token && !S.grid) buildGrid(); }, 0);  // after the first paint, not before it
}

// ---- selection -----------------------------------------------------------------------------------------------------
function inside(poly, x, y) {  // even-odd rule, as scatter.rows_in_polygon
  let c = false;
  for (let a = 0, b = poly.length - 1; a < poly.length; b = a++) {
    const [xa, ya] = poly[a], [xb, yb] = poly[b];
    if ((ya > y) !== (yb > y) && x < xa + (y - ya) * (xb - xa) / (yb - ya)) c = !c;
  }
  return c;
}
function select(worldPoly) {  // fade what is outside; Python lists the rows inside (rows_in_polygon on floats)
  S.selection = worldPoly; S.mask = null;
  if (worldPoly) {
    const mask = new Uint8Array(S.n), xs = worldPoly.map((p) => p[0]), ys = worldPoly.map((p) => p[1]);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    for (let i = 0; i < S.n; i++) {
      const x = S.qx[i] / Q * S.ax, y = S.qy[i] / Q * S.ay;
      if (x >= x0 && x <= x1 && y >= y0 && y <= y1 && (worldPoly.length === 4 && worldPoly.box || inside(worldPoly, x, y))) mask[i] = 1;
    }
    S.mask = mask;
    if (gl) { gl.bindBuffer(gl.ARRAY_BUFFER, buf.s); gl.bufferData(gl.ARRAY_BUFFER, mask, gl.STATIC_DRAW); }
  }
  redraw();
  trigger('region', { token: S.token, polygon: worldPoly ? worldPoly.map(([x, y]) => toData(x, y)) : null });
}
function pick(i) {
  if (i < 0) return;
  const row = rowOf(i);
  S.rings = { row, neighbours: [] }; redraw();  // ringed now; its neighbours come with the details
  trigger('select', { row, token: S.token });
}
function setLasso(on) { S.lasso = on; lassoBtn.setAttribute('aria-pressed', String(on)); }

// ---- hover tooltip -------------------------------------------------------------------------------------------------
const pictures = new Map();  // row -> reply, the last 300
let hoverTimer = 0;
function placeTip(px, py) {
  const w = tip.offsetWidth || 80, h = tip.offsetHeight || 90;
  tip.style.left = `${Math.min(S.W - w - 2, px + 12)}px`;
  tip.style.top = `${py + 12 + h > S.H ? Math.max(0, py - h - 8) : py + 12}px`;
}
function showTip(i, px, py) {
  const row = rowOf(i), known = pictures.get(row);
  tipText.textContent = known ? known.caption : `row ${row}`;
  if (known) tipImg.src = known.src; else tipImg.removeAttribute('src');
  tip.hidden = false; placeTip(px, py);
  clearTimeout(hoverTimer);
  if (known) return;
  hoverTimer = setTimeout(async () => {  // asked for once the pointer rests: no request per passing point
    try {
      const reply = await server.row_picture({ token: S.token, row });
      pictures.set(row, reply);
      if (pictures.size > 300) pictures.delete(pictures.keys().next().value);
      if (S.hover >= 0 && rowOf(S.hover) === row) { tipText.textContent = reply.caption; tipImg.src = reply.src; placeTip(px, py); }
    } catch (e) { /* the tooltip keeps 'row N' */ }
  }, HOVER_MS);
}
function hover(px, py) {
  const i = nearest(px, py, PICK_PX);
  if (i !== S.hover) { S.hover = i; redraw(); }
  if (i < 0) { tip.hidden = true; clearTimeout(hoverTimer); } else showTip(i, px, py);
}

// ---- pointer: drag pans, shift+drag boxes, alt+drag (or Lasso) lassos, a click picks, the wheel zooms -------------
const local = (e) => { const r = stage.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
stage.addEventListener('pointerdown', (e) => {
  if (e.button !== 0 || !S.n) return;
  const [x, y] = local(e);
  const mode = e.shiftKey ? 'box' : (e.altKey || S.lasso) ? 'lasso' : 'pan';
  S.drag = { mode, x0: x, y0: y, x, y, moved: 0, path: [[x, y]] };
  stage.setPointerCapture(e.pointerId); e.preventDefault();
});
stage.addEventListener('pointermove', (e) => {
  const [x, y] = local(e), d = S.drag;
  if (!d) { if (S.n) hover(x, y); return; }
  d.moved = Math.max(d.moved, Math.hypot(x - d.x0, y - d.y0));
  if (d.mode === 'pan') { S.cx -= (x - d.x) / S.k; S.cy += (y - d.y) / S.k; S.moved = true; tip.hidden = true; }
  if (d.mode === 'lasso') { const [lx, ly] = d.path[d.path.length - 1]; if (Math.hypot(x - lx, y - ly) >= 3) d.path.push([x, y]); }
  d.x = x; d.y = y; redraw();
});
stage.addEventListener('pointerup', (e) => {
  const d = S.drag; S.drag = null;
  if (!d) return;
  const [x, y] = local(e);
  if (d.moved < 4) { pick(nearest(x, y, PICK_PX)); redraw(); return; }
  if (d.mode === 'box') {
    const [a, b] = [toWorld(d.x0, d.y0), toWorld(x, y)];
    const poly = [[a[0], a[1]], [b[0], a[1]], [b[0], b[1]], [a[0], b[1]]]; poly.box = true;
    select(poly);
  } else if (d.mode === 'lasso' && d.path.length >= 3) {
    const step = Math.ceil(d.path.length / 256);  // at most 256 corners reach Python
    select(d.path.filter((_, j) => j % step === 0).map(([px, py]) => toWorld(px, py)));
  }
  redraw();
});
stage.addEventListener('pointerleave', () => { if (!S.drag) { S.hover = -1; tip.hidden = true; redraw(); } });
stage.addEventListener('wheel', (e) => {
  if (!S.n) return;
  e.preventDefault();
  const [x, y] = local(e), [wx, wy] = toWorld(x, y);
  S.k = Math.min(S.fitK * 2000, Math.max(S.fitK / 4, S.k * Math.exp(-e.deltaY * 0.0015)));
  S.cx = wx - (x - S.W / 2) / S.k; S.cy = wy - (S.H / 2 - y) / S.k; S.moved = true;  // the point under the cursor stays
  redraw();
}, { passive: false });
root.querySelector('.gm-reset').addEventListener('click', () => { if (S.W) fit(); S.moved = false; redraw(); });
lassoBtn.addEventListener('click', () => setLasso(!S.lasso));
root.querySelector('.gm-clear').addEventListener('click', () => { if (S.n) select(null); });
root.addEventListener('keydown', (e) => { if (e.key === 'Escape') { S.drag = null; setLasso(false); redraw(); } });

// ---- Python's props; a hook for tests and benchmarks ---------------------------------------------------------------
watch('points', () => load(props.points));
watch('rings', () => { S.rings = props.rings; redraw(); });
if (props.points) load(props.points);
if (props.rings) S.rings = props.rings;
window.gmemMap = {
  toScreen(row) {  // the page position (CSS px) of a row's point, or null when the map does not show it
    const i = pointOf(row); if (i < 0 || !S.W) return null;
    const r = stage.getBoundingClientRect(), [x, y] = screenOf(i);
    return x < 0 || y < 0 || x > S.W || y > S.H ? null : { x: r.left + x, y: r.top + y };
  },
  get token() { return S.token; }, get count() { return S.n; }, get painted() { return S.painted; },
  get rings() { return S.rings; }, get hover() { return S.hover < 0 ? null : rowOf(S.hover); },
  frameMs(k = 5) {  // one pan frame's cost (drawn and finished), for benchmarks/map_paint.py
    const t = performance.now();
    for (let j = 0; j < k; j++) { S.cx += 1e-4; draw(); settle(); }
    return (performance.now() - t) / k;
  },
  pickUs(k = 1000) {  // one nearest-point look-up under the pointer, in microseconds
    if (!S.grid) buildGrid();
    const t = performance.now();
    for (let j = 0; j < k; j++) nearest(((j * 7919) % 1000) / 1000 * S.W, ((j * 104729) % 997) / 997 * S.H, PICK_PX);
    return (performance.now() - t) / k * 1000;
  },
  get renderer() { return gl ? (typeof WebGL2RenderingContext !== 'undefined' && gl instanceof WebGL2RenderingContext ? 'webgl2' : 'webgl') : '2d'; },
  get softwareGL() { return softwareGL(); },
};
