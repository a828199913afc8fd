// vitx serve: the page. Plain JavaScript modules talking to the server's JSON API (same origin, nothing else):
// the image, the model and its predictions, explanation jobs (progress, cancel); the panels are methods.js and maps.js.
import {$, api, clearError, element, showError, showNotice} from "./dom.js";
import {mapCard} from "./maps.js";
import {editedParams, loadMethods, tickedMethods} from "./methods.js";

const state = {models: {}, samples: [], methods: [], image: null, target: null, job: null, timer: null, asked: 0};
const POLL_MS = [40, 400];   // the job is asked for its state soon, then less and less often, up to this
const EXPLAINED = {vqa: "answer", clip: "prompt"};   // what a target is called, by model kind; else class

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
  try {
    state.methods = await loadMethods(model.name);
  } catch (error) {
    showError(error.message);
  }
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
  showNotice(answer.warnings);
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

// ---- explaining ---------------------------------------------------------------------------------------------

async function explain() {
  clearError();
  if (!state.image) return showError("choose a sample image or upload one first");
  const methods = tickedMethods();
  if (!methods.length) return showError("tick at least one method");
  const form = imageForm();
  form.append("methods", methods.join(","));
  if (state.target !== null) form.append("target", String(state.target));
  const params = editedParams(state.methods, methods);
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

function poll(url, delay = POLL_MS[0]) {
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
    else poll(url, Math.min(POLL_MS[1], delay * 1.5));
  }, delay);
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
  showNotice(job.warnings);
  const box = $("#maps");
  box.replaceChildren();
  $("#maps-hint").hidden = true;
  // one explained class for the whole job: a chosen one, or the prediction of a model with one map per method
  // (not a detector's objects, nor an image-text model's prompts, each named under its own map)
  const single = job.results.every((result) => result.maps.length <= 1);
  const known = job.target && job.target.class !== undefined && job.target.class !== null;
  const noun = EXPLAINED[(currentModel() || {}).kind] || "class";
  const line = known && (single || state.target !== null) ? `${noun}: ${job.target.class}` : null;
  $("#explained").textContent = line || "";
  for (const result of job.results) box.append(mapCard(result, line, state.methods));
  $("#command").textContent = job.command;
  $("#command-box").hidden = !job.command;
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
