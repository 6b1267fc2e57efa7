// cryonoo view: WebGL scatter of particle latents, box/lasso selection, maps on click.
// Nothing is fetched from the network: the payload is embedded (static page) or served by the
// same server as the page (points.bin, sections?i=N, POST select). Payload layout: viewer.py.
// window.cryonooView is a small API (documented in docs/analysis.md) for scripts and tests.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const api = { ready: false, error: null, drawn: 0, frames: 0 };
  window.cryonooView = api;

  // ------------------------------------------------------------------ payload
  function base64Bytes(text) {
    const bin = atob(text);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  function parsePayload(buf) {
    const u8 = new Uint8Array(buf);
    if (String.fromCharCode(u8[0], u8[1], u8[2], u8[3]) !== "CRYV") {
      throw new Error("not a cryonoo view payload");
    }
    const size = new DataView(buf).getUint32(4, true);
    const header = JSON.parse(new TextDecoder().decode(u8.subarray(8, 8 + size)));
    const types = { float32: Float32Array, uint8: Uint8Array, uint16: Uint16Array };
    const arrays = {};
    for (const [name, a] of Object.entries(header.arrays)) {
      const count = a.shape.reduce((p, q) => p * q, 1);
      arrays[name] = new types[a.dtype](buf, a.offset, count);
    }
    return { header, arrays };
  }

  async function loadPayload() {
    const text = $("cryonoo-payload").textContent.trim();
    if (text) return { served: false, ...parsePayload(base64Bytes(text)) };
    const resp = await fetch("points.bin");
    if (!resp.ok) throw new Error("points.bin: HTTP " + resp.status);
    return { served: true, ...parsePayload(await resp.arrayBuffer()) };
  }

  // ------------------------------------------------------------------ colours
  const TAB20 = [
    "1f77b4", "ff7f0e", "2ca02c", "d62728", "9467bd", "8c564b", "e377c2", "7f7f7f", "bcbd22",
    "17becf", "aec7e8", "ffbb78", "98df8a", "ff9896", "c5b0d5", "c49c94", "f7b6d2", "c7c7c7",
    "dbdb8d", "9edae5",
  ].map((h) => [0, 2, 4].map((i) => parseInt(h.slice(i, i + 2), 16)));
  const VIRIDIS = [
    [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37],
  ];

  function labelColor(c) {
    if (c < TAB20.length) return TAB20[c];
    const h = (c * 137.508) % 360, s = 0.65, v = 0.85;  // golden-angle hues past 20
    const f = (n) => {
      const k = (n + h / 60) % 6;
      return Math.round(255 * (v - v * s * Math.max(0, Math.min(k, 4 - k, 1))));
    };
    return [f(5), f(3), f(1)];
  }

  function rampColor(t) {
    const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - i;
    return VIRIDIS[i].map((a, j) => Math.round(a + f * (VIRIDIS[i + 1][j] - a)));
  }

  function palette(coloring) {
    const lut = new Uint8Array(coloring.count * 3);
    for (let c = 0; c < coloring.count; c++) {
      const rgb = coloring.kind === "labels" ? labelColor(c) : rampColor(c / (coloring.count - 1));
      lut.set(rgb, 3 * c);
    }
    return lut;
  }

  function colorArray(codes, lut, n) {
    const out = new Uint8Array(4 * n);
    const alpha = n > 200000 ? 110 : n > 20000 ? 170 : 230;
    for (let i = 0; i < n; i++) {
      const c = 3 * codes[i];
      out[4 * i] = lut[c]; out[4 * i + 1] = lut[c + 1]; out[4 * i + 2] = lut[c + 2];
      out[4 * i + 3] = alpha;
    }
    return out;
  }

  // ------------------------------------------------------------------ state
  const S = {
    n: 0, header: null, arrays: null, served: false, plane: null, coloring: null,
    xy: null, rgba: null, sel: null, nsel: 0, view: { cx: 0, cy: 0, scale: 1 },
    width: 1, height: 1, dpr: 1, renderer: null, drag: null, picked: -1,
  };

  function toScreen(x, y) {
    const v = S.view;
    return [S.width / 2 + (x - v.cx) * v.scale, S.height / 2 - (y - v.cy) * v.scale];
  }

  function toData(px, py) {
    const v = S.view;
    return [v.cx + (px - S.width / 2) / v.scale, v.cy - (py - S.height / 2) / v.scale];
  }

  function quantiles(axis, lo, hi) {
    // [lo, hi] quantiles of one coordinate over an even subsample of at most 20 000 points
    const step = Math.max(1, Math.floor(S.n / 20000)), m = Math.ceil(S.n / step);
    const v = new Float32Array(m);
    for (let j = 0; j < m; j++) v[j] = S.xy[2 * j * step + axis];
    v.sort();
    return [v[Math.floor(lo * (m - 1))], v[Math.ceil(hi * (m - 1))]];
  }

  function fitView() {
    // the central 99.8 % of the particles on each axis (outliers may fall outside; zoom out)
    const [x0, x1] = quantiles(0, 0.001, 0.999), [y0, y1] = quantiles(1, 0.001, 0.999);
    const w = Math.max(x1 - x0, 1e-12), h = Math.max(y1 - y0, 1e-12);
    S.view = {
      cx: (x0 + x1) / 2, cy: (y0 + y1) / 2,
      scale: 0.94 * Math.min(S.width / w, S.height / h),
    };
  }

  // ------------------------------------------------------------------ rendering: WebGL
  const VS = `
    attribute vec2 a_pos; attribute vec4 a_col; attribute float a_sel;
    uniform vec2 u_center; uniform vec2 u_scale; uniform float u_size; uniform float u_any;
    varying vec4 v_col;
    void main() {
      gl_Position = vec4((a_pos - u_center) * u_scale, a_sel > 0.5 ? -0.5 : 0.5, 1.0);
      gl_PointSize = a_sel > 0.5 ? u_size * 1.4 : u_size;
      vec4 c = a_col;
      if (u_any > 0.5 && a_sel < 0.5) c = vec4(mix(c.rgb, vec3(0.75), 0.7), c.a * 0.5);
      v_col = c;
    }`;
  const FS = `precision mediump float; varying vec4 v_col;
    void main() { gl_FragColor = v_col; }`;

  function glRenderer(canvas) {
    const gl = canvas.getContext("webgl", {
      alpha: false, antialias: false, preserveDrawingBuffer: true,
    });
    if (!gl) return null;
    const shader = (type, src) => {
      const s = gl.createShader(type);
      gl.shaderSource(s, src); gl.compileShader(s);
      if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
      return s;
    };
    const prog = gl.createProgram();
    gl.attachShader(prog, shader(gl.VERTEX_SHADER, VS));
    gl.attachShader(prog, shader(gl.FRAGMENT_SHADER, FS));
    gl.linkProgram(prog);
    if (!gl.getProgramParameter(prog, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(prog));
    gl.useProgram(prog);
    const loc = (name) => gl.getAttribLocation(prog, name);
    const uni = (name) => gl.getUniformLocation(prog, name);
    const buffers = { pos: gl.createBuffer(), col: gl.createBuffer(), sel: gl.createBuffer() };
    const attrib = (buf, name, size, type, norm) => {
      gl.bindBuffer(gl.ARRAY_BUFFER, buf);
      gl.enableVertexAttribArray(loc(name));
      gl.vertexAttribPointer(loc(name), size, type, norm, 0, 0);
    };
    attrib(buffers.pos, "a_pos", 2, gl.FLOAT, false);
    attrib(buffers.col, "a_col", 4, gl.UNSIGNED_BYTE, true);
    attrib(buffers.sel, "a_sel", 1, gl.UNSIGNED_BYTE, false);
    gl.enable(gl.BLEND);
    gl.blendFuncSeparate(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA, gl.ONE, gl.ONE_MINUS_SRC_ALPHA);
    gl.enable(gl.DEPTH_TEST);
    gl.depthFunc(gl.LEQUAL);
    const upload = (buf, data, usage) => {
      gl.bindBuffer(gl.ARRAY_BUFFER, buf);
      gl.bufferData(gl.ARRAY_BUFFER, data, usage);
    };
    return {
      name: "webgl",
      positions: (xy) => upload(buffers.pos, xy, gl.STATIC_DRAW),
      colors: (rgba) => upload(buffers.col, rgba, gl.STATIC_DRAW),
      selection: (sel) => upload(buffers.sel, sel, gl.DYNAMIC_DRAW),
      draw() {
        gl.viewport(0, 0, canvas.width, canvas.height);
        gl.clearColor(1, 1, 1, 1);
        gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
        const v = S.view;
        gl.uniform2f(uni("u_center"), v.cx, v.cy);
        gl.uniform2f(uni("u_scale"), (2 * v.scale) / S.width, (2 * v.scale) / S.height);
        gl.uniform1f(uni("u_size"), pointSize());
        gl.uniform1f(uni("u_any"), S.nsel > 0 ? 1 : 0);
        gl.drawArrays(gl.POINTS, 0, S.n);
        return gl.getError() === gl.NO_ERROR ? S.n : 0;
      },
    };
  }

  // ------------------------------------------------------------------ rendering: 2-D fallback
  function canvasRenderer(canvas) {
    const ctx = canvas.getContext("2d");
    return {
      name: "2d",
      positions() {}, colors() {}, selection() {},
      draw() {
        const w = canvas.width, h = canvas.height, img = ctx.createImageData(w, h);
        const px = img.data;
        px.fill(255);
        const size = Math.max(1, Math.round(pointSize()));
        const pass = (wanted) => {
          for (let i = 0; i < S.n; i++) {
            const picked = S.sel[i] === 1;
            if (S.nsel > 0 && picked !== wanted) continue;
            const [sx, sy] = toScreen(S.xy[2 * i], S.xy[2 * i + 1]);
            const x = Math.round(sx * S.dpr), y = Math.round(sy * S.dpr);
            for (let dy = 0; dy < size; dy++) for (let dx = 0; dx < size; dx++) {
              const xx = x + dx, yy = y + dy;
              if (xx < 0 || yy < 0 || xx >= w || yy >= h) continue;
              const o = 4 * (yy * w + xx), dim = S.nsel > 0 && !picked;
              for (let c = 0; c < 3; c++) {
                px[o + c] = dim ? 220 : S.rgba[4 * i + c];
              }
            }
          }
        };
        pass(false);
        if (S.nsel > 0) pass(true);
        ctx.putImageData(img, 0, 0);
        return S.n;
      },
    };
  }

  function pointSize() {
    const base = S.n > 200000 ? 1.5 : S.n > 20000 ? 2.5 : 4;
    return base * S.dpr;
  }

  let pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      drawNow();
    });
  }

  function drawNow() {
    api.drawn = S.renderer.draw();
    api.frames += 1;
    drawOverlay();
  }

  // ------------------------------------------------------------------ overlay (drag, pick)
  function drawOverlay() {
    const c = $("overlay"), ctx = c.getContext("2d");
    ctx.setTransform(S.dpr, 0, 0, S.dpr, 0, 0);
    ctx.clearRect(0, 0, S.width, S.height);
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#000";
    const d = S.drag;
    if (d && d.mode === "box" && d.moved) {
      ctx.setLineDash([5, 3]);
      ctx.strokeRect(d.x0, d.y0, d.x - d.x0, d.y - d.y0);
      ctx.setLineDash([]);
    }
    if (d && d.mode === "lasso" && d.path.length > 1) {
      ctx.beginPath();
      d.path.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
      ctx.stroke();
    }
    if (S.picked >= 0) {
      const [x, y] = toScreen(S.xy[2 * S.picked], S.xy[2 * S.picked + 1]);
      ctx.beginPath();
      ctx.arc(x, y, 6, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  // ------------------------------------------------------------------ selection
  function apply(inside, op) {
    // inside: (i) => boolean over every particle; op: "replace" | "add" | "remove"
    const sel = S.sel;
    let count = 0;
    for (let i = 0; i < S.n; i++) {
      const hit = inside(i);
      if (op === "add") sel[i] = sel[i] | hit;
      else if (op === "remove") sel[i] = hit ? 0 : sel[i];
      else sel[i] = hit ? 1 : 0;
      count += sel[i];
    }
    return selectionChanged(count);
  }

  function selectionChanged(count) {
    S.nsel = count;
    S.renderer.selection(S.sel);
    $("count").textContent = `selected ${count.toLocaleString("en-US")} / ` +
      `${S.n.toLocaleString("en-US")} particles`;
    $("save").disabled = count === 0;
    redraw();
    return count;
  }

  function selectBox(x0, x1, y0, y1, op = "replace") {
    const xmin = Math.min(x0, x1), xmax = Math.max(x0, x1);
    const ymin = Math.min(y0, y1), ymax = Math.max(y0, y1);
    const xy = S.xy;
    api.lastBox = [xmin, xmax, ymin, ymax];
    return apply((i) => {
      const x = xy[2 * i], y = xy[2 * i + 1];
      return x >= xmin && x <= xmax && y >= ymin && y <= ymax ? 1 : 0;
    }, op);
  }

  function edgeBins(poly) {
    // CSR lists of the polygon's edges overlapping each of nb horizontal bands
    const m = poly.length;
    let ymin = Infinity, ymax = -Infinity, xmin = Infinity, xmax = -Infinity;
    for (const [x, y] of poly) {
      ymin = Math.min(ymin, y); ymax = Math.max(ymax, y);
      xmin = Math.min(xmin, x); xmax = Math.max(xmax, x);
    }
    const nb = Math.max(1, Math.min(1024, m)), h = (ymax - ymin) / nb || 1;
    const band = (y) => Math.min(nb - 1, Math.max(0, Math.floor((y - ymin) / h)));
    const counts = new Int32Array(nb + 1);
    const range = (e) => {
      const a = poly[e][1], b = poly[(e + 1) % m][1];
      return [band(Math.min(a, b)), band(Math.max(a, b))];
    };
    for (let e = 0; e < m; e++) {
      const [b0, b1] = range(e);
      for (let b = b0; b <= b1; b++) counts[b + 1]++;
    }
    for (let b = 0; b < nb; b++) counts[b + 1] += counts[b];
    const edges = new Int32Array(counts[nb]), fill = counts.slice(0, nb);
    for (let e = 0; e < m; e++) {
      const [b0, b1] = range(e);
      for (let b = b0; b <= b1; b++) edges[fill[b]++] = e;
    }
    return { band, start: counts, edges, xmin, xmax, ymin, ymax };
  }

  function selectPolygon(points, op = "replace") {
    // points: [[x, y], …] in data coordinates (≥ 3); even-odd rule (crossing number)
    if (points.length < 3) return S.nsel;
    const poly = points.map(([x, y]) => [+x, +y]), m = poly.length;
    const px = Float64Array.from(poly, (p) => p[0]), py = Float64Array.from(poly, (p) => p[1]);
    const g = edgeBins(poly), xy = S.xy;
    api.lastPolygon = poly;
    return apply((i) => {
      const x = xy[2 * i], y = xy[2 * i + 1];
      if (x < g.xmin || x > g.xmax || y < g.ymin || y > g.ymax) return 0;
      const b = g.band(y);
      let inside = 0;
      for (let k = g.start[b]; k < g.start[b + 1]; k++) {
        const e = g.edges[k], f = (e + 1) % m;
        const ya = py[e], yb = py[f];
        if ((ya > y) !== (yb > y) && x < ((px[f] - px[e]) * (y - ya)) / (yb - ya) + px[e]) {
          inside ^= 1;
        }
      }
      return inside;
    }, op);
  }

  function invert() {
    let count = 0;
    for (let i = 0; i < S.n; i++) { S.sel[i] ^= 1; count += S.sel[i]; }
    return selectionChanged(count);
  }

  function clear() {
    S.sel.fill(0);
    return selectionChanged(0);
  }

  function selectedIndices() {
    const out = [];
    for (let i = 0; i < S.n; i++) if (S.sel[i]) out.push(i);
    return out;
  }

  function status(text, error = false) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
  }

  async function save() {
    const indices = selectedIndices();
    if (!indices.length) { status("nothing selected", true); return null; }
    if (!S.served) {
      const blob = new Blob([indices.join("\n") + "\n"], { type: "text/plain" });
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = "selection.txt";
      document.body.appendChild(a); a.click(); a.remove();
      status(`downloaded selection.txt: ${indices.length} 0-based indices; then\n` +
        "cryonoo select LATENTS --index selection.txt -o STEM --star/--cs …");
      return { count: indices.length, paths: ["selection.txt"] };
    }
    status("saving …");
    const resp = await fetch("select", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ indices }),
    });
    const reply = await resp.json();
    if (!resp.ok) { status(reply.error || "HTTP " + resp.status, true); return reply; }
    status(`saved ${reply.count.toLocaleString("en-US")} particles:\n` + reply.paths.join("\n"));
    api.lastSaved = reply;
    return reply;
  }

  // ------------------------------------------------------------------ picking and maps
  function nearest(px, py, radius = 10) {
    let best = -1, bestD = radius * radius;
    const xy = S.xy, v = S.view, hx = S.width / 2, hy = S.height / 2;
    for (let i = 0; i < S.n; i++) {
      const dx = hx + (xy[2 * i] - v.cx) * v.scale - px;
      const dy = hy - (xy[2 * i + 1] - v.cy) * v.scale - py;
      const d = dx * dx + dy * dy;
      if (d < bestD) { bestD = d; best = i; }
    }
    return best;
  }

  function pick(i) {
    S.picked = i;
    redraw();
    const sec = S.header.sections, img = $("sections-img");
    if (i < 0) return;
    const cl = S.arrays[S.header.clusters.array][i];
    let text = `particle ${i} (0-based), k-means cluster ${cl} of ${S.header.clusters.k}`;
    for (const c of S.header.colorings) {
      if (c.kind !== "values") continue;
      const level = S.arrays[c.array][i], t = level / (c.count - 1);
      text += `; ${c.label} ≈ ${(c.vmin + t * (c.vmax - c.vmin)).toPrecision(4)}`;
    }
    $("sections-caption").textContent = text;
    if (sec.mode === "none") { img.hidden = true; return; }
    img.hidden = false;
    img.src = sec.images ? sec.images[cl] : `sections?i=${i}`;
  }

  // ------------------------------------------------------------------ controls
  function setPlane(name) {
    const plane = S.header.planes.find((p) => p.name === name);
    if (!plane) throw new Error("no plane " + name);
    S.plane = plane;
    S.xy = S.arrays[plane.array];
    S.renderer.positions(S.xy);
    $("plane").value = name;
    $("axis-x").textContent = plane.axes[0];
    $("axis-y").textContent = plane.axes[1];
    fitView();
    redraw();
  }

  function setColoring(name) {
    const c = S.header.colorings.find((q) => q.name === name);
    if (!c) throw new Error("no colouring " + name);
    S.coloring = c;
    const lut = palette(c);
    S.rgba = colorArray(S.arrays[c.array], lut, S.n);
    S.renderer.colors(S.rgba);
    $("coloring").value = name;
    legend(c, lut);
    redraw();
  }

  function legend(c, lut) {
    const box = $("legend");
    box.textContent = "";
    if (c.kind === "values") {
      const ramp = document.createElement("canvas");
      ramp.id = "ramp"; ramp.width = 256; ramp.height = 1;
      const ctx = ramp.getContext("2d"), img = ctx.createImageData(256, 1);
      for (let j = 0; j < 256; j++) {
        img.data.set(lut.subarray(3 * j, 3 * j + 3), 4 * j); img.data[4 * j + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
      box.append(ramp, `≤ ${c.vmin.toPrecision(4)} … ≥ ${c.vmax.toPrecision(4)} ` +
        "(1st–99th percentile)");
      return;
    }
    const codes = S.arrays[c.array], counts = new Array(c.count).fill(0);
    for (let i = 0; i < S.n; i++) counts[codes[i]]++;
    for (let k = 0; k < c.count; k++) {
      const item = document.createElement("span"), sw = document.createElement("span");
      sw.className = "sw";
      sw.style.background = `rgb(${lut[3 * k]},${lut[3 * k + 1]},${lut[3 * k + 2]})`;
      item.append(sw, `${k}: ${counts[k]}`);
      box.append(item);
    }
  }

  function resize() {
    const plot = $("plot"), dpr = window.devicePixelRatio || 1;
    S.width = Math.max(1, plot.clientWidth); S.height = Math.max(1, plot.clientHeight);
    S.dpr = dpr;
    for (const id of ["gl", "overlay"]) {
      $(id).width = Math.round(S.width * dpr); $(id).height = Math.round(S.height * dpr);
    }
  }

  function mouseOp(ev) { return ev.shiftKey ? "add" : ev.altKey ? "remove" : "replace"; }

  function bindMouse() {
    const c = $("overlay");
    const at = (ev) => { const r = c.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; };
    c.addEventListener("mousedown", (ev) => {
      const [x, y] = at(ev);
      const mode = ev.button === 1 ? "pan" : document.querySelector("input[name=mode]:checked").value;
      S.drag = { mode, x0: x, y0: y, x, y, moved: false, path: [[x, y]], view: { ...S.view } };
      ev.preventDefault();
    });
    window.addEventListener("mousemove", (ev) => {
      const d = S.drag;
      if (!d) return;
      const [x, y] = at(ev);
      d.x = x; d.y = y;
      d.moved = d.moved || Math.hypot(x - d.x0, y - d.y0) > 3;
      if (d.mode === "pan") {
        S.view.cx = d.view.cx - (x - d.x0) / S.view.scale;
        S.view.cy = d.view.cy + (y - d.y0) / S.view.scale;
        redraw();
      } else {
        const last = d.path[d.path.length - 1];
        if (d.mode === "lasso" && Math.hypot(x - last[0], y - last[1]) > 2) d.path.push([x, y]);
        drawOverlay();
      }
    });
    window.addEventListener("mouseup", (ev) => {
      const d = S.drag;
      if (!d) return;
      S.drag = null;
      if (!d.moved) { pick(nearest(d.x0, d.y0)); drawOverlay(); return; }
      if (d.mode === "box") {
        const [x0, y0] = toData(d.x0, d.y0), [x1, y1] = toData(d.x, d.y);
        selectBox(x0, x1, y0, y1, mouseOp(ev));
      } else if (d.mode === "lasso") {
        selectPolygon(d.path.map(([x, y]) => toData(x, y)), mouseOp(ev));
      }
      drawOverlay();
    });
    c.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const [x, y] = at(ev), [dx, dy] = toData(x, y);
      const f = Math.exp(-ev.deltaY * 0.0015);
      S.view.scale *= f;
      S.view.cx = dx - (x - S.width / 2) / S.view.scale;
      S.view.cy = dy + (y - S.height / 2) / S.view.scale;
      redraw();
    }, { passive: false });
  }

  function bindControls() {
    const fill = (sel, items) => {
      for (const it of items) {
        const o = document.createElement("option");
        o.value = it.name; o.textContent = it.label; sel.append(o);
      }
    };
    fill($("plane"), S.header.planes);
    fill($("coloring"), S.header.colorings);
    $("plane").addEventListener("change", (ev) => setPlane(ev.target.value));
    $("coloring").addEventListener("change", (ev) => setColoring(ev.target.value));
    $("reset").addEventListener("click", () => { fitView(); redraw(); });
    $("invert").addEventListener("click", invert);
    $("clear").addEventListener("click", clear);
    $("save").addEventListener("click", save);
    window.addEventListener("resize", () => { resize(); S.renderer.positions(S.xy); fitView(); redraw(); });
  }

  function describe() {
    const h = S.header, src = h.source;
    const what = src.zfile || src.run || "";
    $("title").textContent = `${h.n.toLocaleString("en-US")} particles, zdim ${h.zdim}` +
      (what ? ` — ${what}` : "") + (S.served ? " (served)" : " (static page)");
    const notes = {
      decoded: "Click a particle: central sections (xy, xz, yz) of the map decoded from its own " +
        "latent by the run's decoder.",
      centroids: "Click a particle: central sections (xy, xz, yz) of the precomputed map of its " +
        `k-means cluster (nearest of ${h.clusters.k} centroids), not of the particle itself.`,
      none: "No maps: view a run directory (or an analysis with maps) to see them.",
    };
    $("sections-mode").textContent = notes[h.sections.mode] || "";
  }

  async function main() {
    try {
      const p = await loadPayload();
      S.header = p.header; S.arrays = p.arrays; S.served = p.served; S.n = p.header.n;
      S.sel = new Uint8Array(S.n);
      resize();
      S.renderer = glRenderer($("gl")) || canvasRenderer($("gl"));
      describe();
      bindControls();
      bindMouse();
      setPlane(S.header.planes[0].name);
      setColoring(S.header.colorings[0].name);
      selectionChanged(0);
      drawNow();
      Object.assign(api, {
        n: S.n, renderer: S.renderer.name, served: S.served, header: S.header,
        planes: S.header.planes.map((q) => q.name), colorings: S.header.colorings.map((q) => q.name),
        setPlane, setColoring, toScreen, toData, selectBox, selectPolygon, invert, clear, save,
        pick, selectedIndices, selectedCount: () => S.nsel, view: () => ({ ...S.view }),
        coords: () => S.xy, draw: drawNow,
      });
      api.ready = true;
    } catch (err) {
      api.error = String(err);
      status("cannot show the particles: " + err, true);
      throw err;
    }
  }

  main();
})();
