// vitx serve: the page's small helpers: the server's JSON API, the error line, building elements.
export const $ = (selector) => document.querySelector(selector);

/** The JSON answer of ``path``; an error answer throws its one-line ``error``. */
export async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const reason = body && body.error ? body.error : `${response.status} ${response.statusText}`;
    throw new Error(reason);
  }
  return body;
}

/** Show ``message`` in the page's error line (#error). */
export function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = false;
}

/** Show what the server warned of (e.g. words the model does not know) in the notice line (#notice), or hide it. */
export function showNotice(messages) {
  const box = $("#notice");
  box.textContent = (messages || []).join(" ");
  box.hidden = !box.textContent;
}

export function clearError() {
  $("#error").hidden = true;
  $("#error").textContent = "";
}

/** A new ``tag`` element: ``class``, ``text`` and ``data-*`` attributes, other keys set as properties, then the
 * children (null ones left out). */
export function element(tag, attributes = {}, ...children) {
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
