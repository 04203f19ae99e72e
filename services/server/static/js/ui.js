// Small DOM helpers. Everything a run or a person typed is written with textContent, never parsed as HTML.

export const $ = (id) => document.getElementById(id);

/** el("td", {className: "x", title: "..."}, "text", childNode, ...) */
export function el(tag, props = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(n.dataset, v);
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else n[k] = v;
  }
  for (const c of children) n.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return n;
}

export function row(cells, props = {}) {
  return el("tr", props, ...cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))));
}

export function fill(tbody, rows) { tbody.replaceChildren(...rows); }

export function fmt(v, digits = 3) {
  if (v == null) return "-";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : v.toFixed(digits));
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

export function when(t) {
  if (!t) return "-";
  const d = new Date(t * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + (Date.now() - d > 86400e3 ? " " + d.toLocaleDateString() : "");
}

/** Feedback messages stay until dismissed (a refresh of the data never clears them). */
export function feedback(text, kind = "info") {
  const list = $("feedback");  // newest first
  const last = list.firstElementChild;
  if (last && last.dataset.text === text) {  // the same message again: count it instead of stacking copies
    const n = +(last.dataset.n || 1) + 1;
    last.dataset.n = n;
    last.querySelector("span").textContent = `${text} (×${n})`;
    return last;
  }
  const li = el("li", { className: kind, dataset: { text } }, el("span", {}, text),
    el("button", { type: "button", title: "dismiss", className: "dismiss", onclick: () => { li.remove(); syncFeedback(); } }, "×"));
  list.prepend(li);
  syncFeedback();
  return li;
}

function syncFeedback() {
  const b = $("feedback-clear");
  b.hidden = $("feedback").children.length < 2;
  b.onclick = () => { $("feedback").replaceChildren(); syncFeedback(); };
}

export const debounce = (f, ms) => { let t; return (...a) => { clearTimeout(t); t = setTimeout(() => f(...a), ms); }; };

/** Get a dotted path ("kl.coef") of a nested object. */
export const getPath = (obj, path) => path.split(".").reduce((o, k) => (o == null ? undefined : o[k]), obj);

/** Set a dotted path, creating the objects on the way. */
export function setPath(obj, path, value) {
  const ks = path.split(".");
  let o = obj;
  for (const k of ks.slice(0, -1)) o = (o[k] = (o[k] && typeof o[k] === "object") ? o[k] : {});
  o[ks[ks.length - 1]] = value;
}

/** b merged into a: nested objects merged, any other value of b replaces (the service's preset merge). */
export function merge(a, b) {
  const out = { ...a };
  for (const [k, v] of Object.entries(b)) {
    out[k] = v && typeof v === "object" && !Array.isArray(v) && out[k] && typeof out[k] === "object" && !Array.isArray(out[k]) ? merge(out[k], v) : v;
  }
  return out;
}
