// vitx serve: the methods panel: checkboxes grouped by family, each with its cost, its parameters (prefilled with the
// defaults) and, where it does not apply to the model, greyed out with the reason.
import {$, api, element} from "./dom.js";

/** Fill the panel with the methods of ``model``, keeping ticked those that were and apply (where none does:
 * generic-attention, or the first method that applies); returns the method rows. */
export async function loadMethods(model) {
  const box = $("#methods");
  const ticked = new Set(tickedMethods());
  const {methods} = await api(`/api/methods?model=${encodeURIComponent(model)}`);
  const applying = methods.filter((row) => row.applies).map((row) => row.name);
  if (!applying.some((name) => ticked.has(name))) {
    ticked.add(applying.includes("generic-attention") ? "generic-attention" : applying[0]);
  }
  const families = new Map();
  for (const row of methods) {
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
  return methods;
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

export function tickedMethods() {
  return [...document.querySelectorAll("#methods input[type=checkbox][data-method]:checked")]
    .map((box) => box.dataset.method);
}

/** The parameters of the methods ``names`` that differ from their defaults, as {method: {param: value}}. */
export function editedParams(rows, names) {
  const params = {};
  for (const name of names) {
    const row = rows.find((method) => method.name === name);
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
