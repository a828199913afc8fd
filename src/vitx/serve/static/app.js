// vitx serve: the page. Plain JavaScript talking to the server's JSON API (same origin, nothing else).
"use strict";

const $ = (selector) => document.querySelector(selector);
const state = {models: {}, samples: [], methods: [], image: null, target: null, job: null, timer: null, asked: 0};
const POLL_MS = 250;
const SHOWN = 4;   // leaderboard scores shown on a card before the rest fold away
const EXPLAINED = {vqa: "answer", clip: "prompt"};   // what a target is called, by model kind; else class

// ---- talking to the server ----------------------------------------------------------------------------------

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const reason = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(reason);
  }
  return body;
}

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("#error").hidden = true;
  $("#error").textContent = "";
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

function currentModel() {
  return state.models[$("#model").value];
}

// ---- the image ----------------------------------------------------------------------------------------------

function renderSamples() {
  const model = $("#model").value;
  const box = $("#samples");
  box.replaceChildren();
  for (const sample of state.samples) {
    if (sample.models && sample.models.length && !sample.models.includes(model)) continue;
    const button = element("button", {type: "button", class: "sample", title: sample.name, "data-sample": sample.name},
      element("img", {src: sample.url, alt: sample.name}));
    if (state.image && state.image.sample === sample.name) button.classList.add("selected");
    button.addEventListener("click", () => chooseImage({sample: sample.name, url: sample.url, name: sample.name}));
    box.append(button);
  }
}

function chooseImage(image) {
  if (state.image && state.image.file) URL.revokeObjectURL(state.image.url);
  state.image = image;
  state.target = null;
  clearResults();
  $("#preview").hidden = false;
  $("#preview").src = image.url;
  $("#chosen-name").textContent = image.name;
  $("#chosen").hidden = false;
  renderSamples();
  predict();
}

function chooseFile(file) {
  if (!file) return;
  chooseImage({file, url: URL.createObjectURL(file), name: file.name});
}

function imageForm() {
  const form = new FormData();
  if (state.image.file) form.append("image", state.image.file, state.image.file.name);
  else form.append("sample", state.image.sample);
  form.append("model", $("#model").value);
  const model = currentModel();
  if (model && model.text) form.append("text", $("#text").value.trim());
  return form;
}

// ---- the model and its predictions --------------------------------------------------------------------------

async function chooseModel() {
  const model = currentModel();
  state.target = null;
  clearResults();
  const needs = model.text;
  $("#text-box").hidden = !needs;
  $("#predict").hidden = !needs;
  $("#text-label").textContent = needs === "prompts" ? "Prompts, one per line" : "Question";
  $("#text").placeholder = needs === "prompts" ? "a red cross\na blue star" : "what colour is the star?";
  $("#model-info").textContent = [model.kind, model.quality, `${model.image_size} px`].filter(Boolean).join(" · ");
  if (state.image && state.image.sample && !sampleFits(state.image.sample)) state.image = null;
  renderSamples();
  if (!state.image) $("#chosen").hidden = true;
  await loadMethods();
  predict();
}

function sampleFits(name) {
  const sample = state.samples.find((row) => row.name === name);
  return !sample || !sample.models || !sample.models.length || sample.models.includes($("#model").value);
}

async function predict() {
  const list = $("#predictions");
  const objects = $("#objects");
  list.replaceChildren();
  objects.replaceChildren();
  const model = currentModel();
  if (!state.image || !model) return;
  if (model.text && !$("#text").value.trim()) {
    $("#predictions-hint").textContent = model.text === "prompts" ? "Write the prompts, one per line, then Predict."
      : "Write a question about the image, then Predict.";
    return;
  }
  clearError();
  const asked = ++state.asked;   // an answer to an older question (image, model or text since changed) is dropped
  try {
    const answer = await api("/api/predictions", {method: "POST", body: imageForm()});
    if (asked === state.asked) renderPredictions(answer);
  } catch (error) {
    $("#predictions-hint").textContent = "No prediction for this image.";
    showError(error.message);
  }
}

function renderPredictions(answer) {
  const list = $("#predictions");
  const detector = Array.isArray(answer.objects);
  $("#objects").hidden = !detector;
  list.hidden = detector;
  $("#predictions-hint").textContent = detector ? "Objects detected; Explain gives one map per object."
    : "Top 5; click a class to explain it.";
  if (detector) {
    for (const object of answer.objects) {
      $("#objects").append(element("li", {"data-query": object.query},
        element("span", {class: "name", text: object.class}),
        element("span", {class: "score", text: object.score.toFixed(2)}),
        element("span", {class: "muted", text: `query ${object.query}`})));
    }
    if (!answer.objects.length) $("#objects").append(element("li", {class: "muted", text: "nothing detected"}));
    return;
  }
  for (const row of answer.predictions) {
    const percent = row.probability < 0.001 ? "<0.1" : (100 * row.probability).toFixed(1);
    const bar = element("span", {class: "bar"});
    bar.style.width = `${Math.max(1, 100 * row.probability)}%`;
    const button = element("button", {type: "button", title: `explain ${row.class}`},
      element("span", {class: "name", text: row.class}), element("span", {class: "score", text: `${percent}%`}),
      element("span", {class: "track"}, bar));
    const item = element("li", {"data-index": row.index, "data-class": row.class}, button);
    if (state.target === row.index) item.classList.add("selected");
    button.addEventListener("click", () => {
      state.target = row.index;
      for (const other of list.children) other.classList.toggle("selected", other === item);
      explain();
    });
    list.append(item);
  }
}

// ---- methods ------------------------------------------------------------------------------------------------

async function loadMethods() {
  const box = $("#methods");
  const ticked = new Set(tickedMethods());
  try {
    const answer = await api(`/api/methods?model=${encodeURIComponent($("#model").value)}`);
    state.methods = answer.methods;
  } catch (error) {
    showError(error.message);
    return;
  }
  if (!ticked.size) ticked.add("generic-attention");
  const families = new Map();
  for (const row of state.methods) {
    if (!families.has(row.family)) families.set(row.family, []);
    families.get(row.family).push(row);
  }
  box.replaceChildren();
  for (const [family, rows] of families) {
    rows.sort((a, b) => Number(b.applies) - Number(a.applies));
    const open = rows.some((row) => row.applies);
    const group = element("details", {class: "family", open, "data-family": family},
      element("summary", {}, element("span", {class: "family-name", text: family}), " ",
        element("span", {class: "muted", text: `${rows.filter((row) => row.applies).length}/${rows.length} apply`})));
    for (const row of rows) group.append(methodRow(row, row.applies && ticked.has(row.name)));
    box.append(group);
  }
}

function methodRow(row, checked) {
  const box = element("input", {type: "checkbox", checked, disabled: !row.applies, "data-method": row.name});
  const title = `${row.summary}\n${row.paper}`;
  const label = element("label", {title}, box, element("span", {class: "name", text: row.name}),
    element("span", {class: "cost", title: "forward (F) and backward (B) passes per image", text: row.cost}));
  const item = element("div", {class: row.applies ? "method" : "method disabled", "data-method": row.name}, label);
  if (!row.applies) {
    item.title = row.reason || "does not apply to this model";
    item.append(element("p", {class: "reason", text: row.reason || "does not apply to this model"}));
    return item;
  }
  const names = Object.keys(row.params || {});
  if (names.length) {
    const fields = element("div", {class: "params"});
    for (const name of names) fields.append(paramInput(row, name));
    item.append(element("details", {class: "param-box"}, element("summary", {text: "parameters"}), fields));
  }
  return item;
}

function paramInput(row, name) {
  const value = row.params[name];
  const range = row.ranges && row.ranges[name] ? `range ${row.ranges[name]}` : "";
  const input = element("input", {"data-param": name, title: range || name});
  if (typeof value === "boolean") {
    input.type = "checkbox";
    input.checked = value;
  } else if (typeof value === "number") {
    input.type = "number";
    input.step = "any";
    input.value = String(value);
  } else {
    input.type = "text";
    input.value = value === null ? "" : typeof value === "string" ? value : JSON.stringify(value);
    input.placeholder = value === null ? "none" : "";
  }
  return element("label", {class: "param"}, element("span", {text: name}), input,
    range ? element("span", {class: "muted", text: range}) : null);
}

function readParam(input, fallback) {
  if (input.type === "checkbox") return input.checked;
  if (input.type === "number") return input.value === "" ? fallback : Number(input.value);
  if (input.value === "") return null;
  if (typeof fallback === "string") return input.value;
  try { return JSON.parse(input.value); } catch (_) { return input.value; }
}

function tickedMethods() {
  return [...document.querySelectorAll("#methods input[type=checkbox][data-method]:checked")]
    .map((box) => box.dataset.method);
}

function editedParams(names) {
  const params = {};
  for (const name of names) {
    const row = state.methods.find((method) => method.name === name);
    const item = document.querySelector(`#methods .method[data-method="${CSS.escape(name)}"]`);
    for (const input of item ? item.querySelectorAll("input[data-param]") : []) {
      const key = input.dataset.param;
      const value = readParam(input, row.params[key]);
      if (JSON.stringify(value) === JSON.stringify(row.params[key])) continue;
      params[name] = params[name] || {};
      params[name][key] = value;
    }
  }
  return params;
}

// ---- explaining ---------------------------------------------------------------------------------------------

async function explain() {
  clearError();
  if (!state.image) return showError("choose a sample image or upload one first");
  const methods = tickedMethods();
  if (!methods.length) return showError("tick at least one method");
  const form = imageForm();
  form.append("methods", methods.join(","));
  if (state.target !== null) form.append("target", String(state.target));
  const params = editedParams(methods);
  if (Object.keys(params).length) form.append("params", JSON.stringify(params));
  stopPolling();
  try {
    const answer = await api("/api/explain", {method: "POST", body: form});
    state.job = answer.job;
    setRunning(true, {done: 0, total: methods.length});
    poll(answer.status_url);
  } catch (error) {
    setRunning(false);
    showError(error.message);
  }
}

function poll(url) {
  state.timer = setTimeout(async () => {
    let job;
    try {
      job = await api(url);
    } catch (error) {
      setRunning(false);
      return showError(error.message);
    }
    if (job.job !== state.job) return;
    setRunning(job.state === "queued" || job.state === "running", job);
    if (job.state === "done") renderResults(job);
    else if (job.state === "error") showError(job.error || "the explanation failed");
    else if (job.state === "cancelled") $("#progress-text").textContent = "cancelled";
    else poll(url);
  }, POLL_MS);
}

function stopPolling() {
  clearTimeout(state.timer);
  state.timer = null;
}

async function cancel() {
  if (!state.job) return;
  const id = state.job;
  stopPolling();
  try {
    await api(`/api/jobs/${encodeURIComponent(id)}`, {method: "DELETE"});
  } catch (error) {
    showError(error.message);
  }
  state.job = null;
  setRunning(false);
  $("#progress").hidden = false;
  $("#progress-text").textContent = "cancelled";
}

function setRunning(running, job = null) {
  $("#explain").disabled = running;
  $("#cancel").hidden = !running;
  $("#progress").hidden = !running;
  if (job) {
    $("#progress-bar").max = Math.max(1, job.total);
    $("#progress-bar").value = job.done;
    $("#progress-text").textContent = `${job.state || "queued"}: ${job.done}/${job.total}`;
  }
}

// ---- the maps -----------------------------------------------------------------------------------------------

function clearResults() {
  stopPolling();
  state.job = null;
  setRunning(false);
  $("#maps").replaceChildren();
  $("#maps-hint").hidden = false;
  $("#explained").textContent = "";
  $("#command-box").hidden = true;
}

function renderResults(job) {
  const box = $("#maps");
  box.replaceChildren();
  $("#maps-hint").hidden = true;
  const target = job.target && job.target.class !== undefined && job.target.class !== null ? job.target : null;
  const noun = EXPLAINED[(currentModel() || {}).kind] || "class";
  $("#explained").textContent = target ? `${noun}: ${target.class}` : "";
  for (const result of job.results) box.append(mapCard(result, target && `${noun}: ${target.class}`));
  $("#command").textContent = job.command;
  $("#command-box").hidden = !job.command;
}

function mapCard(result, target) {
  const row = state.methods.find((method) => method.name === result.method) || {};
  const card = element("article", {class: "map-card", "data-method": result.method},
    element("header", {}, element("h3", {text: result.method, title: row.summary || ""}),
      element("span", {class: "muted", text: [row.family, row.cost].filter(Boolean).join(" · ")})));
  if (target) card.append(element("p", {class: "target", text: target}));
  if (result.error) {
    card.append(element("p", {class: "reason", text: result.error}));
    return card;
  }
  const maps = element("div", {class: "maps"});
  for (const map of result.maps) {
    maps.append(element("figure", {},
      element("img", {src: map.overlay, alt: `${result.method}: ${map.label}`, title: map.label}),
      element("figcaption", {}, element("span", {class: "label", text: map.label}),
        element("a", {href: map.png, download: "", text: "PNG"}),
        element("a", {href: map.overlay, download: "", text: "overlay"}),
        element("a", {href: map.npy, download: "", text: "NPY"}))));
  }
  card.append(maps);
  if (result.text) card.append(textRelevance(result.text));
  card.append(scoreTable(result.scores || row.scores, row.scores_command));
  return card;
}

function textRelevance(text) {
  const line = element("p", {class: "tokens", title: "relevance of each word of the text"});
  const top = Math.max(1e-9, ...text.relevance);
  text.tokens.forEach((token, i) => {
    const word = element("span", {text: token, title: text.relevance[i].toFixed(3)});
    word.style.setProperty("--relevance", String(Math.max(0, text.relevance[i]) / top));
    line.append(word, " ");
  });
  return line;
}

function scoreTable(scores, command) {
  if (!scores || !Object.keys(scores).length) {
    return element("p", {class: "scores muted", text: "no leaderboard scores for this model"});
  }
  const rows = Object.entries(scores).map(([metric, value]) => element("tr", {},
    element("th", {text: metric.replaceAll("_", " ")}),
    element("td", {text: typeof value === "number" ? String(Number(value.toFixed(3))) : String(value)})));
  const tooltip = command ? `from the leaderboard: ${command}` : "from the leaderboard";
  const box = element("div", {class: "score-box", title: tooltip},
    element("span", {class: "muted", text: "leaderboard"}),
    element("table", {class: "scores"}, ...rows.slice(0, SHOWN)));
  if (rows.length > SHOWN) {
    box.append(element("details", {}, element("summary", {text: `${rows.length - SHOWN} more scores`}),
      element("table", {class: "scores"}, ...rows.slice(SHOWN))));
  }
  return box;
}

// ---- start-up -----------------------------------------------------------------------------------------------

async function copyCommand() {
  const text = $("#command").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("#copy").textContent = "Copied";
  } catch (_) {
    getSelection().selectAllChildren($("#command"));
    $("#copy").textContent = "Selected";
  }
  setTimeout(() => { $("#copy").textContent = "Copy"; }, 1500);
}

function wire() {
  $("#model").addEventListener("change", chooseModel);
  $("#file").addEventListener("change", (event) => chooseFile(event.target.files[0]));
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    chooseFile(event.dataTransfer.files[0]);
  });
  $("#text").addEventListener("change", () => { state.target = null; predict(); });
  $("#predict").addEventListener("click", predict);
  $("#explain").addEventListener("click", explain);
  $("#cancel").addEventListener("click", cancel);
  $("#copy").addEventListener("click", copyCommand);
  $("#preview").addEventListener("error", () => { $("#preview").hidden = true; });   // not an image the browser reads
}

async function start() {
  wire();
  try {
    const [models, samples] = await Promise.all([api("/api/models"), api("/api/samples")]);
    state.samples = samples.samples;
    for (const model of models.models) {
      state.models[model.name] = model;
      $("#model").append(element("option", {value: model.name, text: model.name}));
    }
  } catch (error) {
    return showError(error.message);
  }
  await chooseModel();
  document.body.dataset.ready = "true";
}

start();
