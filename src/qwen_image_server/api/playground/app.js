// The playground: a client of the native task API (docs/api.md), in plain browser JavaScript.
// Every call is relative to the page, so the page works behind a proxy that serves it under a prefix.
"use strict";

const KEY_STORE = "qwen-image-playground.key";
const HISTORY_STORE = "qwen-image-playground.history";
const HISTORY_MAX = 50;
const RECONNECT_MS = 1000;
const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

let models = []; // GET v1/models: {id, description, ready, max_input_images}
let inputImages = []; // {name, dataUrl}: sent as data URIs in `images`
let current = null; // the task on show: {task, abort: AbortController}
let lastAnnounced = ""; // the status line last put in the aria-live region

// ---- The API ---------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, param) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

function apiKey() {
  return localStorage.getItem(KEY_STORE) || "";
}

// The key travels in a header only: EventSource cannot send one, so events are read with fetch().
function headers(extra) {
  const all = { ...extra };
  const key = apiKey();
  if (key) all.Authorization = `Bearer ${key}`;
  return all;
}

async function send(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "network", `The server cannot be reached (${error.message}).`);
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

async function errorOf(response) {
  let detail = {};
  try {
    detail = (await response.json()).error || {};
  } catch {
    // not our JSON error shape (a proxy's page): the status says enough
  }
  const said = detail.message || `The server answered ${response.status}.`;
  if (response.status === 401) {
    const what = apiKey() ? "The server refused this API key" : "This server needs an API key";
    return new ApiError(401, detail.code, `${what} (401): enter a valid key under “API key”. ${said}`);
  }
  if (response.status === 403) {
    return new ApiError(403, detail.code, `This API key may not do this (403 ${detail.code}): ${said}`);
  }
  return new ApiError(response.status, detail.code, said, detail.param);
}

// Server-Sent Events from a fetch() body: `onEvent(type, data)` for each event, until the stream ends.
async function readEvents(path, signal, onEvent) {
  const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let type = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (;;) {
      const end = /\r\n|\r|\n/.exec(buffer);
      // A "\r" at the end of a chunk may be the first half of "\r\n": wait for the next chunk.
      if (!end || (end[0] === "\r" && end.index === buffer.length - 1)) break;
      const line = buffer.slice(0, end.index);
      buffer = buffer.slice(end.index + end[0].length);
      if (line === "") {
        if (data.length) onEvent(type, JSON.parse(data.join("\n")));
        type = "message";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = text;
        else if (field === "data") data.push(text);
      }
    }
  }
}

// ---- Small DOM helpers -----------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name in node) node[name] = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function showError(error) {
  $("error").textContent = error.message || String(error);
  if (error.status === 401 || error.status === 403) {
    $("key-box").open = true;
    $("api-key").focus();
  } else if (error.param && fieldOf(error.param)) {
    fieldOf(error.param).focus();
  }
}

// The form field of an API parameter (the `param` of the server's error), or null.
function fieldOf(param) {
  const ids = {
    prompt: "prompt", negative_prompt: "negative-prompt", size: "size", width: "width", height: "height",
    num_inference_steps: "steps", true_cfg_scale: "cfg", seed: "seed", n: "count", images: "images",
    strength: "strength", model: "model",
  };
  const name = param.split(".")[0]; // "images.1" names the second input image
  return $(ids[name] || name); // the page's own checks name the field by its id
}

// ---- The key ---------------------------------------------------------------------------------

function showKeyState() {
  $("key-state").textContent = apiKey() ? "(saved in this browser)" : "(none entered)";
}

function saveKey() {
  const key = $("api-key").value.trim();
  if (key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
  showKeyState();
  $("error").textContent = "";
  announce(key ? "API key saved." : "API key removed.");
}

function forgetKey() {
  $("api-key").value = "";
  saveKey();
}

// ---- Models and the form ---------------------------------------------------------------------

async function loadModels() {
  try {
    models = (await send("GET", "v1/models")).data;
  } catch (error) {
    showError(error);
    return;
  }
  const select = $("model");
  select.replaceChildren(
    ...models.map((m) => el("option", { value: m.id }, `${m.id}${m.ready ? "" : " (loading)"}`)),
  );
  onModelChange();
}

function selectedModel() {
  return models.find((m) => m.id === $("model").value);
}

function onModelChange() {
  const model = selectedModel();
  if (!model) return;
  $("model-hint").textContent = model.description + (model.ready ? "" : "; a worker is still loading it");
  $("inputs").hidden = model.max_input_images === 0;
  showInputs();
}

function onSizeChange() {
  const custom = $("size").value === "custom";
  $("width").disabled = !custom;
  $("height").disabled = !custom;
}

function numberOf(id) {
  const text = $(id).value.trim();
  if (text === "") return undefined;
  const value = Number(text);
  if (!Number.isFinite(value)) throw Object.assign(new Error(`${labelOf(id)} must be a number.`), { param: id });
  return value;
}

function labelOf(id) {
  return document.querySelector(`label[for="${id}"]`).firstChild.textContent.trim();
}

// The body of POST /v1/tasks from the form; the server checks every bound and says what is wrong.
function requestBody() {
  if (!$("prompt").value.trim()) throw Object.assign(new Error("Write a prompt first."), { param: "prompt" });
  const body = {
    model: $("model").value,
    prompt: $("prompt").value,
    n: numberOf("count") ?? 1,
    output_format: $("format").value,
    partial_images: Number($("previews").value),
  };
  const negative = $("negative-prompt").value;
  if (negative.trim()) body.negative_prompt = negative;
  if ($("size").value === "custom") {
    body.width = numberOf("width");
    body.height = numberOf("height");
  } else {
    body.size = $("size").value;
  }
  const optional = { num_inference_steps: "steps", true_cfg_scale: "cfg", seed: "seed" };
  for (const [name, id] of Object.entries(optional)) {
    const value = numberOf(id);
    if (value !== undefined) body[name] = value;
  }
  const model = selectedModel();
  if (model && model.max_input_images > 0 && inputImages.length) {
    body.images = inputImages.map((image) => image.dataUrl);
    if (!$("strength-row").hidden) body.strength = numberOf("strength");
  }
  return body;
}

// ---- Input images ----------------------------------------------------------------------------

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function addFiles(files) {
  const model = selectedModel();
  const room = model ? model.max_input_images - inputImages.length : 0;
  const chosen = [...files].filter((file) => file.type.startsWith("image/"));
  if (chosen.length > room) {
    $("error").textContent = `${model.id} takes at most ${model.max_input_images} input image(s).`;
  }
  for (const file of chosen.slice(0, Math.max(room, 0))) {
    inputImages.push({ name: file.name, dataUrl: await readAsDataUrl(file) });
  }
  $("images").value = "";
  showInputs();
}

function showInputs() {
  const model = selectedModel();
  const max = model ? model.max_input_images : 0;
  $("inputs-count").textContent = `(${inputImages.length} of at most ${max})`;
  $("input-list").replaceChildren(
    ...inputImages.map((image, i) =>
      el(
        "li",
        {},
        el("img", { src: image.dataUrl, alt: `Input ${i + 1}: ${image.name}` }),
        el("button", { type: "button", onclick: () => removeInput(i) }, `Remove ${image.name}`),
      ),
    ),
  );
  // qwen-image with one input image is image-to-image: how far it may go is `strength`.
  $("strength-row").hidden = !(model && model.id === "qwen-image" && inputImages.length > 0);
}

function removeInput(index) {
  const [gone] = inputImages.splice(index, 1);
  showInputs();
  announce(`Removed ${gone.name}.`);
  $("images").focus();
}

// ---- Following a task ------------------------------------------------------------------------

async function generate(event) {
  event.preventDefault();
  $("error").textContent = "";
  let body;
  try {
    body = requestBody();
  } catch (error) {
    showError(error);
    return;
  }
  $("generate").disabled = true;
  try {
    const task = await send("POST", "v1/tasks", body);
    remember(task);
    follow(task);
  } catch (error) {
    showError(error);
  } finally {
    $("generate").disabled = false;
  }
}

// Show `task` and follow its events until it ends; a dropped stream is resumed from a fresh read.
async function follow(task) {
  if (current) current.abort.abort();
  const mine = { task, abort: new AbortController() };
  current = mine;
  render();
  const path = `v1/tasks/${encodeURIComponent(task.id)}`;
  while (!TERMINAL.has(mine.task.status)) {
    try {
      await readEvents(`${path}/events`, mine.abort.signal, (type, data) => onEvent(mine, type, data));
    } catch (error) {
      if (mine.abort.signal.aborted) return;
      if (error instanceof ApiError) {
        showError(error);
        return;
      }
    }
    if (mine.abort.signal.aborted || TERMINAL.has(mine.task.status)) return;
    await sleep(RECONNECT_MS);
    try {
      update(mine, await send("GET", path));
    } catch (error) {
      showError(error);
      return;
    }
  }
}

function onEvent(mine, type, data) {
  if (type === "queued") update(mine, { ...mine.task, status: "queued", queue_position: data.queue_position });
  else if (type === "progress") update(mine, { ...mine.task, status: "running", progress: data.progress });
  else if (type === "preview") update(mine, { ...mine.task, previews: [...mine.task.previews, data] });
  else if (TERMINAL.has(type)) update(mine, data);
}

function update(mine, task) {
  mine.task = task;
  if (current === mine) render();
  if (TERMINAL.has(task.status) || task.status !== historyStatus(task.id)) remember(task);
}

async function cancelTask() {
  if (!current) return;
  try {
    update(current, await send("POST", `v1/tasks/${encodeURIComponent(current.task.id)}/cancel`));
  } catch (error) {
    showError(error);
  }
}

async function reopen(id) {
  $("error").textContent = "";
  try {
    follow(await send("GET", `v1/tasks/${encodeURIComponent(id)}`));
    $("task-title").focus();
  } catch (error) {
    if (error.status === 404) {
      error.message = "That task is no longer on this server (or it belongs to another API key).";
    }
    showError(error);
  }
}

// ---- Showing a task --------------------------------------------------------------------------

function statusLine(task) {
  const p = task.progress;
  switch (task.status) {
    case "queued":
      return task.queue_position == null ? "Queued." : `Queued: ${task.queue_position} task(s) ahead.`;
    case "running":
      return p.total ? `Running: step ${p.step} of ${p.total}.` : "Running.";
    case "succeeded": {
      const seconds = (Date.parse(task.finished_at) - Date.parse(task.started_at)) / 1000;
      const withheld = task.report ? task.report.images.filter((image) => image.withheld).length : 0;
      const kept = withheld ? ` (${withheld} withheld by the safety checker)` : "";
      return `Succeeded: ${task.results.length} image(s)${kept} in ${seconds.toFixed(1)} s.`;
    }
    case "failed":
      return task.error ? `Failed (${task.error.code}): ${task.error.message}` : "Failed.";
    default:
      return "Canceled.";
  }
}

function render() {
  const task = current.task;
  const line = statusLine(task);
  $("task-id").textContent = `Task ${task.id} · ${task.model}`;
  // Screen readers hear the status when it changes and every tenth of the way, not every step.
  const tenth = task.status === "running" ? Math.floor(task.progress.percent / 10) : -1;
  const spoken = `${task.status}:${tenth}`;
  if (spoken !== lastAnnounced || TERMINAL.has(task.status)) {
    lastAnnounced = spoken;
    $("status").textContent = line;
  }
  $("status").dataset.status = task.status;
  $("progress").value = task.status === "succeeded" ? 100 : task.progress.percent;
  $("cancel").disabled = TERMINAL.has(task.status);
  $("use-settings").hidden = false;
  showPreviews(task);
  showResults(task);
}

function showPreviews(task) {
  // The newest preview of each image; gone once the results are there.
  const newest = new Map();
  if (task.status !== "succeeded") for (const preview of task.previews) newest.set(preview.index, preview);
  $("previews-title").hidden = newest.size === 0;
  $("preview-list").replaceChildren(
    ...[...newest.values()].map((p) =>
      el("li", {}, el("img", { src: p.url, alt: `Preview ${p.partial_index + 1} of image ${p.index + 1}` })),
    ),
  );
}

function showResults(task) {
  $("results-title").hidden = task.results.length === 0;
  $("result-list").replaceChildren(
    ...task.results.map((result) =>
      el(
        "li",
        {},
        el(
          "figure",
          {},
          el("a", { href: result.url, target: "_blank", rel: "noopener" },
            el("img", { src: result.url, alt: `Image ${result.index + 1}, seed ${result.seed}: ${task.request.prompt}` })),
          el("figcaption", {}, `Seed ${result.seed} · ${result.width} × ${result.height}`),
        ),
        el("button", { type: "button", onclick: () => reuseSeed(result.seed) }, `Reuse seed ${result.seed}`),
      ),
    ),
  );
}

// Put the settings of the task on show back in the form (its input images are not returned by the API).
function useSettings() {
  const { request, model } = current.task;
  if (models.some((m) => m.id === model)) $("model").value = model;
  onModelChange();
  $("prompt").value = request.prompt;
  $("negative-prompt").value = request.negative_prompt || "";
  const preset = [...$("size").options].find(
    (o) => Number(o.dataset.width) === request.width && Number(o.dataset.height) === request.height,
  );
  $("size").value = preset ? preset.value : "custom";
  $("width").value = String(request.width);
  $("height").value = String(request.height);
  onSizeChange();
  $("steps").value = String(request.num_inference_steps);
  $("cfg").value = String(request.true_cfg_scale);
  $("seed").value = String(request.seed);
  $("count").value = String(request.n);
  $("format").value = request.output_format;
  $("prompt").focus();
  announce(request.input_images ? "Settings copied; choose the input images again." : "Settings copied.");
}

function reuseSeed(seed) {
  $("seed").value = String(seed);
  $("count").value = "1";
  $("seed").focus();
  announce(`Seed ${seed} set; images: 1.`);
}

function announce(text) {
  $("status").textContent = text;
  lastAnnounced = "";
}

// ---- History (this browser's tasks, in local storage) ----------------------------------------

function history() {
  try {
    const entries = JSON.parse(localStorage.getItem(HISTORY_STORE) || "[]");
    return Array.isArray(entries) ? entries : [];
  } catch {
    return [];
  }
}

function historyStatus(id) {
  const entry = history().find((e) => e.id === id);
  return entry ? entry.status : undefined;
}

// Record the task's latest state; a task already listed keeps its place, a new one goes first.
function remember(task) {
  const entries = history();
  const at = entries.findIndex((e) => e.id === task.id);
  const entry = {
    id: task.id,
    model: task.model,
    prompt: task.request.prompt,
    created_at: task.created_at,
    status: task.status,
    thumb: task.results.length ? task.results[0].url : null,
    seed: task.request.seed,
  };
  if (at < 0) entries.unshift(entry);
  else entries[at] = entry;
  localStorage.setItem(HISTORY_STORE, JSON.stringify(entries.slice(0, HISTORY_MAX)));
  showHistory();
}

function forget(id) {
  localStorage.setItem(HISTORY_STORE, JSON.stringify(history().filter((e) => e.id !== id)));
  showHistory();
  $("history-title").focus();
}

function showHistory() {
  const entries = history();
  $("history-empty").hidden = entries.length > 0;
  $("clear-history").hidden = entries.length === 0;
  $("history-list").replaceChildren(
    ...entries.map((entry) => {
      const when = new Date(entry.created_at).toLocaleString();
      const thumb = entry.thumb
        ? el("img", { src: entry.thumb, alt: "", onerror: (e) => e.target.remove() }) // an expired link
        : el("span", { className: "no-thumb" });
      return el(
        "li",
        {},
        el(
          "button",
          {
            type: "button", className: "open", onclick: () => reopen(entry.id),
            "aria-label": `Open “${entry.prompt}”: ${entry.status}, ${entry.model}, seed ${entry.seed}, ${when}`,
          },
          thumb,
          el("span", { className: "what" }, entry.prompt),
          el("span", { className: "meta" }, `${entry.model} · seed ${entry.seed} · ${when}`),
          el("span", { className: `badge ${entry.status}` }, entry.status),
        ),
        el("button", { type: "button", className: "remove", onclick: () => forget(entry.id),
          "aria-label": `Remove “${entry.prompt}” from history` }, "×"),
      );
    }),
  );
}

// ---- Start -----------------------------------------------------------------------------------

function start() {
  $("api-key").value = apiKey();
  showKeyState();
  $("save-key").addEventListener("click", saveKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("api-key").addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault(); // Enter here saves the key; it does not start a task
      saveKey();
    }
  });
  $("model").addEventListener("change", onModelChange);
  $("size").addEventListener("change", onSizeChange);
  $("images").addEventListener("change", (event) => addFiles(event.target.files));
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    addFiles(event.dataTransfer.files);
  });
  $("create").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancelTask);
  $("use-settings").addEventListener("click", useSettings);
  $("clear-history").addEventListener("click", () => {
    localStorage.removeItem(HISTORY_STORE);
    showHistory();
  });
  $("task-title").tabIndex = -1; // focus targets for keyboard users after reopening or removing
  $("history-title").tabIndex = -1;
  onSizeChange();
  showHistory();
  loadModels();
}

start();
