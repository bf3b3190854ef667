"use strict";
// idruid layout editor: draw boxes on a canvas, caption them, generate through /api/jobs.
// validate() mirrors idruid.layout.layout_from_dict so that mistakes show at once beside the
// box; the server checks again and its answers are shown in the same places.

const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
                "#42d4f4", "#f032e6", "#bfef45", "#fabed4", "#469990", "#9a6324", "#000075"];
const MIN_DRAG_PX = 3;  // a shorter drag is a click (it selects), not a box
const POLL_MS = 150;
const COORDS = ["x0", "y0", "x1", "y1"];

const $ = (id) => document.getElementById(id);
const canvas = $("layout-canvas");
const ctx = canvas.getContext("2d");
const overlay = $("overlay");

const state = {
  boxes: [],          // {caption, box: [x0, y0, x1, y1]} normalised to [0, 1]
  drag: null,         // {x0, y0, x1, y1} normalised, while the mouse button is down
  selected: -1,
  invalid: new Set(), // boxes with a problem, outlined in red
  showErrors: false,  // set by the first Generate / Download / Upload; then errors follow edits
  config: {max_instances: 10, max_steps: 200, max_cfg: 30},
  job: null,          // the snapshot of the job whose image is shown
};

const round3 = (v) => Math.round(v * 1000) / 1000;  // 1/1000 of the side is finer than a canvas pixel
const clamp01 = (v) => Math.min(1, Math.max(0, v));
const colorOf = (k) => COLORS[k % COLORS.length];
const numberOf = (el) => (el.value.trim() === "" ? NaN : Number(el.value));

// ------------------------------------------------------------------ drawing on the canvas

function pointOf(event) {
  const rect = canvas.getBoundingClientRect();
  return {
    x: clamp01((event.clientX - rect.left - canvas.clientLeft) / canvas.clientWidth),
    y: clamp01((event.clientY - rect.top - canvas.clientTop) / canvas.clientHeight),
  };
}

function boxAt(p) {
  for (let k = state.boxes.length - 1; k >= 0; k--) {
    const [x0, y0, x1, y1] = state.boxes[k].box;
    if (p.x >= x0 && p.x <= x1 && p.y >= y0 && p.y <= y1) return k;
  }
  return -1;
}

canvas.addEventListener("mousedown", (event) => {
  if (event.button !== 0) return;
  const p = pointOf(event);
  state.drag = {x0: p.x, y0: p.y, x1: p.x, y1: p.y};
  event.preventDefault();
  draw();
});

window.addEventListener("mousemove", (event) => {
  if (!state.drag) return;
  const p = pointOf(event);
  state.drag.x1 = p.x;
  state.drag.y1 = p.y;
  draw();
});

window.addEventListener("mouseup", () => {
  const d = state.drag;
  if (!d) return;
  state.drag = null;
  const box = [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)];
  const tooSmall = (box[2] - box[0]) * canvas.clientWidth < MIN_DRAG_PX
    || (box[3] - box[1]) * canvas.clientHeight < MIN_DRAG_PX;
  if (tooSmall) {
    select(boxAt({x: d.x0, y: d.y0}), true);
    return;
  }
  state.boxes.push({caption: "", box: box.map(round3)});
  renderBoxList();
  select(state.boxes.length - 1, true);
  refresh();
});

function draw() {
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "rgba(255, 255, 255, 0.15)";
  ctx.lineWidth = 1;
  for (let i = 1; i < 8; i++) {
    ctx.beginPath();
    ctx.moveTo((i * w) / 8, 0); ctx.lineTo((i * w) / 8, h);
    ctx.moveTo(0, (i * h) / 8); ctx.lineTo(w, (i * h) / 8);
    ctx.stroke();
  }
  state.boxes.forEach((b, k) => drawBox(ctx, b.box, k, b.caption, {
    fill: true, selected: k === state.selected, invalid: state.invalid.has(k),
  }));
  if (state.drag) {
    const d = state.drag;
    ctx.setLineDash([5, 4]);
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 2;
    ctx.strokeRect(Math.min(d.x0, d.x1) * w, Math.min(d.y0, d.y1) * h,
                   Math.abs(d.x1 - d.x0) * w, Math.abs(d.y1 - d.y0) * h);
    ctx.setLineDash([]);
  }
}

function drawBox(c, box, k, caption, {fill = false, selected = false, invalid = false} = {}) {
  const w = c.canvas.width, h = c.canvas.height;
  const [x0, y0, x1, y1] = box.map((v) => (Number.isFinite(v) ? v : 0));
  const x = x0 * w, y = y0 * h, bw = (x1 - x0) * w, bh = (y1 - y0) * h;
  if (fill) {
    c.globalAlpha = 0.22;
    c.fillStyle = colorOf(k);
    c.fillRect(x, y, bw, bh);
    c.globalAlpha = 1;
  }
  c.lineWidth = selected ? 4 : 2;
  c.strokeStyle = invalid ? "#ff0000" : colorOf(k);
  c.setLineDash(invalid ? [6, 4] : []);
  c.strokeRect(x, y, bw, bh);
  c.setLineDash([]);
  const label = caption ? `${k + 1} ${caption}` : `${k + 1}${invalid ? " !" : ""}`;
  c.font = "12px system-ui, sans-serif";
  const tw = Math.min(c.measureText(label).width + 8, Math.max(w - x, 20));
  c.fillStyle = invalid ? "#ff0000" : colorOf(k);
  c.fillRect(x, Math.max(0, y - 16), tw, 16);
  c.fillStyle = "#fff";
  c.save();
  c.beginPath();
  c.rect(x, Math.max(0, y - 16), tw, 16);
  c.clip();
  c.fillText(label, x + 4, Math.max(0, y - 16) + 12);
  c.restore();
}

// ------------------------------------------------------------------ the list of boxes

function renderBoxList() {
  const list = $("boxes");
  list.replaceChildren();
  state.boxes.forEach((b, k) => {
    const row = document.createElement("li");
    row.className = "box-row";
    row.dataset.box = String(k);
    row.style.setProperty("--box-color", colorOf(k));

    const head = document.createElement("div");
    head.className = "box-head";
    const number = document.createElement("span");
    number.className = "box-number";
    number.textContent = String(k + 1);
    const caption = document.createElement("input");
    caption.className = "caption";
    caption.placeholder = `caption of box ${k + 1}, e.g. a red circle`;
    caption.value = b.caption;
    caption.addEventListener("input", () => { b.caption = caption.value; refresh(); });
    caption.addEventListener("focus", () => select(k, false));
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "delete";
    remove.title = `delete box ${k + 1}`;
    remove.textContent = "\u00d7";
    remove.addEventListener("click", () => {
      state.boxes.splice(k, 1);
      state.selected = -1;
      renderBoxList();
      refresh();
    });
    head.append(number, caption, remove);

    const coords = document.createElement("div");
    coords.className = "coords";
    COORDS.forEach((name, i) => {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "number";
      input.step = "0.01";
      input.min = "0";
      input.max = "1";
      input.dataset.coord = name;
      input.value = Number.isFinite(b.box[i]) ? String(b.box[i]) : "";
      input.addEventListener("input", () => { b.box[i] = numberOf(input); refresh(); });
      label.append(`${name} `, input);
      coords.append(label);
    });

    const error = document.createElement("div");
    error.className = "box-error";
    row.append(head, coords, error);
    list.append(row);
  });
}

function select(k, focusCaption) {
  state.selected = k;
  document.querySelectorAll(".box-row").forEach((row) => {
    row.classList.toggle("selected", Number(row.dataset.box) === k);
  });
  if (focusCaption && k >= 0) document.querySelector(`.box-row[data-box="${k}"] .caption`).focus();
  draw();
}

// ------------------------------------------------------------------ checks (as the server's)

function validate({layoutOnly = false} = {}) {
  const errors = [];
  const max = state.config.max_instances;
  if (!$("prompt").value.trim()) errors.push({field: "prompt", message: "missing or empty", box: null});
  if (!state.boxes.length) {
    errors.push({field: "instances", message: "must hold at least 1 instance: draw a box", box: null});
  }
  state.boxes.forEach((b, k) => {
    if (k >= max) {
      errors.push({field: "instances", box: k,
                   message: `has ${state.boxes.length} instances, at most ${max} are allowed`});
    }
    if (!b.caption.trim()) errors.push({field: "caption", message: "missing or empty", box: k});
    const problem = boxProblem(b.box);
    if (problem) errors.push({field: "box", message: problem, box: k});
  });
  const seed = numberOf($("seed"));
  if (!Number.isInteger(seed) || seed < 0) {
    errors.push({field: "seed", message: "must be a non-negative integer", box: null});
  }
  if (layoutOnly) return errors;
  const steps = numberOf($("steps"));
  if (!Number.isInteger(steps) || steps < 1 || steps > state.config.max_steps) {
    errors.push({field: "steps", box: null,
                 message: `must be a whole number from 1 to ${state.config.max_steps}`});
  }
  const cfg = numberOf($("cfg"));
  if (!Number.isFinite(cfg) || cfg < 0 || cfg > state.config.max_cfg) {
    errors.push({field: "cfg", message: `must be a number from 0 to ${state.config.max_cfg}`, box: null});
  }
  return errors;
}

function boxProblem(box) {
  if (box.length !== 4 || !box.every(Number.isFinite)) return "must be a list of 4 numbers [x0, y0, x1, y1]";
  for (let i = 0; i < 4; i++) {
    if (box[i] < 0 || box[i] > 1) return `${COORDS[i]}=${box[i]} is outside [0, 1] (boxes are normalised)`;
  }
  if (box[2] <= box[0]) return "x1 must be greater than x0 (zero or negative width)";
  if (box[3] <= box[1]) return "y1 must be greater than y0 (zero or negative height)";
  return null;
}

function showErrors(errors) {
  document.querySelectorAll(".box-error, .field-error").forEach((el) => { el.textContent = ""; });
  document.querySelectorAll(".box-row").forEach((row) => row.classList.remove("invalid"));
  state.invalid = new Set();
  const general = [];
  for (const e of errors) {
    const line = `${e.field}: ${e.message}`;
    if (e.box !== null && e.box !== undefined) {
      state.invalid.add(e.box);
      const row = document.querySelector(`.box-row[data-box="${e.box}"]`);
      if (row) {
        row.classList.add("invalid");
        appendLine(row.querySelector(".box-error"), line);
        continue;
      }
    }
    const place = document.querySelector(`[data-error-for="${e.field}"]`);
    if (place) appendLine(place, e.message); else general.push(line);
  }
  if (general.length) setStatus(general.join("; "), true);
  draw();
}

function appendLine(el, text) {
  el.textContent = el.textContent ? `${el.textContent}\n${text}` : text;
  el.style.whiteSpace = "pre-line";
}

function refresh() {
  if (state.showErrors) showErrors(validate()); else draw();
}

["prompt", "seed", "steps", "cfg"].forEach((id) => $(id).addEventListener("input", refresh));

// ------------------------------------------------------------------ layout JSON

function layoutDict() {
  return {
    prompt: $("prompt").value.trim(),
    instances: state.boxes.map((b) => ({caption: b.caption.trim(), box: b.box.slice()})),
    seed: numberOf($("seed")),
  };
}

$("download").addEventListener("click", () => {
  state.showErrors = true;
  const errors = validate({layoutOnly: true});
  showErrors(errors);
  if (errors.length) {
    setFileMessage("Not downloaded: fix the marked fields first (the file must be a valid layout).", true);
    return;
  }
  const blob = new Blob([JSON.stringify(layoutDict(), null, 2) + "\n"], {type: "application/json"});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "layout.json";
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  setFileMessage("Downloaded layout.json.", false);
});

function parseLayoutText(text, name) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (whole) {
    const lines = text.split(/\r?\n/).filter((line) => line.trim());
    if (lines.length < 2) throw new Error(`${name}: malformed JSON (${whole.message})`);
    data = lines.map((line, i) => {
      try { return JSON.parse(line); } catch { throw new Error(`${name}: line ${i + 1}: malformed JSON`); }
    });
  }
  let note = "";
  if (Array.isArray(data)) {
    if (!data.length) throw new Error(`${name}: the list holds no layout`);
    if (data.length > 1) note = ` (it holds ${data.length} layouts; loaded the first)`;
    data = data[0];
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new Error(`${name}: layout: must be a JSON object`);
  }
  if (!Array.isArray(data.instances)) throw new Error(`${name}: instances: missing, or not a list`);
  const boxes = data.instances.map((inst) => {
    const ok = inst !== null && typeof inst === "object";
    const box = ok && Array.isArray(inst.box) ? inst.box.map((v) => (typeof v === "number" ? v : NaN)) : [];
    return {caption: ok && typeof inst.caption === "string" ? inst.caption : "", box};
  });
  return {prompt: typeof data.prompt === "string" ? data.prompt : "", boxes, seed: data.seed, note};
}

$("upload").addEventListener("change", async () => {
  const input = $("upload");
  const file = input.files[0];
  if (!file) return;
  const text = await file.text();
  input.value = "";
  let parsed;
  try {
    parsed = parseLayoutText(text, file.name);
  } catch (err) {
    setFileMessage(err.message, true);
    return;
  }
  $("prompt").value = parsed.prompt;
  if (Number.isInteger(parsed.seed) && parsed.seed >= 0) $("seed").value = String(parsed.seed);
  state.boxes = parsed.boxes;
  state.selected = -1;
  renderBoxList();
  state.showErrors = true;
  const errors = validate({layoutOnly: true});
  showErrors(errors);
  setFileMessage(`Loaded ${file.name}${parsed.note}${errors.length ? "; fix the marked fields" : ""}.`,
                 errors.length > 0);
});

$("clear").addEventListener("click", () => {
  state.boxes = [];
  state.selected = -1;
  state.showErrors = false;
  $("prompt").value = "";
  renderBoxList();
  showErrors([]);
  setFileMessage("", false);
});

// ------------------------------------------------------------------ generating

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
}

function setFileMessage(text, isError) {
  $("file-message").textContent = text;
  $("file-message").classList.toggle("error", Boolean(isError));
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

$("generate").addEventListener("click", async () => {
  state.showErrors = true;
  setStatus("", false);
  const errors = validate();
  showErrors(errors);
  if (errors.length) {
    setStatus("Fix the marked fields first.", true);
    return;
  }
  const body = {layout: layoutDict(), steps: numberOf($("steps")), cfg: numberOf($("cfg"))};
  $("generate").disabled = true;
  try {
    const answer = await fetch("/api/jobs", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    });
    const data = await answer.json();
    if (answer.status === 400) {
      showErrors(data.errors);
      setStatus("The server refused the layout: see the marked fields.", true);
      return;
    }
    if (!answer.ok) throw new Error(data.errors ? data.errors[0].message : `server answered ${answer.status}`);
    await follow(data.id);
  } catch (err) {
    setStatus(`Error: ${err.message}`, true);
  } finally {
    $("generate").disabled = false;
  }
});

async function follow(jobId) {
  const progress = $("progress");
  for (;;) {
    const answer = await fetch(`/api/jobs/${jobId}`);
    const job = await answer.json();
    if (!answer.ok) throw new Error(job.errors ? job.errors[0].message : `server answered ${answer.status}`);
    progress.max = job.steps;
    progress.value = job.step;
    if (job.status === "queued") setStatus("waiting for the model\u2026", false);
    if (job.status === "running") setStatus(`step ${job.step} of ${job.steps}`, false);
    if (job.status === "failed" || job.status === "cancelled") throw new Error(job.error);
    if (job.status === "done") {
      const img = $("result");
      img.src = job.image_url;
      await img.decode();
      img.hidden = false;
      img.dataset.job = job.id;
      state.job = job;
      drawOverlay();
      setStatus(`done: ${job.size[0]}\u00d7${job.size[1]} image, ${job.steps} steps, `
                + `${job.seconds.toFixed(2)} s`, false);
      return;
    }
    await sleep(POLL_MS);
  }
}

function drawOverlay() {
  const c = overlay.getContext("2d");
  c.clearRect(0, 0, overlay.width, overlay.height);
  if (!state.job) return;
  state.job.layout.instances.forEach((inst, k) => drawBox(c, inst.box, k, inst.caption));
}

$("show-overlay").addEventListener("change", () => { overlay.hidden = !$("show-overlay").checked; });

// ------------------------------------------------------------------ start

async function start() {
  const answer = await fetch("/api/config");
  const config = await answer.json();
  state.config = config;
  $("max-instances").textContent = String(config.max_instances);
  $("steps").value = String(config.defaults.steps);
  $("cfg").value = String(config.defaults.cfg);
  $("seed").value = String(config.defaults.seed);
  $("steps").max = String(config.max_steps);
  $("cfg").max = String(config.max_cfg);
  document.body.dataset.ready = "true";
  draw();
}

start().catch((err) => setStatus(`Could not reach the server: ${err.message}`, true));
