// Create a run: a preset (GET /presets) plus overrides, validated by the service's schema. A 422 names fields
// ("config.kl.coef"): each message is shown next to the input of that field, or of the nearest section.
import { ApiError, api, messageOf } from "./api.js";
import { GUARD_SIGNALS } from "./charts.js";
import { describe, fieldDefault, loadSchema } from "./schema.js";
import { S } from "./state.js";
import { $, el, feedback, getPath, merge, setPath } from "./ui.js";

// [dotted config field, label, kind]: kind "int" | "float" | "text" | "bool" | [choices]
const FIELDS = [
  ["name", "name", "text"],
  ["algorithm", "algorithm", ["ppo", "fdpg", "quark"]],
  ["train.iterations", "iterations", "int"],
  ["train.eval_every", "evaluate every", "int"],
  ["train.seed", "seed", "int"],
  ["ppo.advantage", "PPO advantage", ["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"]],
  ["generation.n_per_prompt", "samples per prompt", "int"],
  ["kl.mode", "KL control", ["fixed", "adaptive"]],
  ["kl.placement", "KL in the", ["reward", "loss"]],
  ["kl.coef", "KL coef β", "float"],
  ["kl.target", "KL target (nats)", "float"],
  ["proxy.n_members", "ensemble members", "int"],
  ["ensemble.aggregation", "ensemble aggregation", ["mean", "wco", "uwo"]],
  ["ensemble.uwo_lambda", "UWO λ", "float"],
  ["elastic_reset.enabled", "Elastic Reset", "bool"],
  ["elastic_reset.every", "reset every (it.)", "int"],
  ["guard.enabled", "guard armed", "bool"],
  ["guard.action", "guard action", ["alert", "stop", "reset"]],
  ["guard.signal", "guard signal", GUARD_SIGNALS],
];

let onCreated = () => {};

export function initCreate({ created }) {
  onCreated = created;
  const host = $("c-fields");
  for (const [path, label, kind] of FIELDS) {
    const id = "c-" + path.replace(/\./g, "-");
    let input;
    if (Array.isArray(kind) || kind === "bool") {
      const choices = kind === "bool" ? ["true", "false"] : kind;
      input = el("select", { id, dataset: { field: path, kind: kind === "bool" ? "bool" : "choice" } },
        el("option", { value: "" }, "(preset)"), ...choices.map((c) => el("option", { value: c }, c)));
    } else {
      input = el("input", { id, type: "text", inputMode: kind === "text" ? "text" : "decimal", dataset: { field: path, kind }, spellcheck: false });
    }
    host.append(el("div", { className: "field" }, el("label", { htmlFor: id }, label), input,
      el("span", { className: "field-error", dataset: { errorFor: path } })));
  }
  $("c-preset").onchange = showPreset;
  $("create-form").onsubmit = (ev) => { ev.preventDefault(); submit(); };
}

export async function loadPresets() {
  await loadSchema();
  try {
    S.presets = await api("/presets");
  } catch (e) {
    if (e.status === 404) S.presets = [];  // a service without presets: overrides are the whole config
    else return false;
  }
  const sel = $("c-preset"), keep = sel.value;
  sel.replaceChildren(...S.presets.map((p) => el("option", { value: p.name }, p.name)), el("option", { value: "" }, "(none: schema defaults)"));
  if (keep && S.presets.some((p) => p.name === keep)) sel.value = keep;
  showPreset();
  return true;
}

function showPreset() {
  const p = S.presets.find((x) => x.name === $("c-preset").value);
  const desc = $("c-preset-desc");
  desc.replaceChildren();
  if (p) desc.append(p.description + " ", el("details", {}, el("summary", {}, "its config"), el("pre", { className: "config" }, JSON.stringify(p.config, null, 2))));
  for (const input of $("c-fields").querySelectorAll("[data-field]")) {
    const v = p ? getPath(p.config, input.dataset.field) : undefined;
    const d = fieldDefault(input.dataset.field);
    const shown = v !== undefined ? String(v) : d !== undefined && d !== null ? `${d} (default)` : "schema default";
    input.title = describe(input.dataset.field);
    if (input.tagName === "SELECT") input.options[0].textContent = `(preset: ${shown})`;
    else input.placeholder = shown;
  }
}

/** The value an input sends: numbers as numbers (the schema is strict), anything unparsable as typed, so the
 * service's validation names the field. undefined: keep the preset's. */
function valueOf(input) {
  const raw = input.value.trim();
  if (raw === "") return undefined;
  const kind = input.dataset.kind;
  if (kind === "bool") return raw === "true";
  if (kind === "int" && /^[+-]?\d+$/.test(raw)) return Number(raw);
  if (kind === "float" && raw !== "" && Number.isFinite(Number(raw))) return Number(raw);
  return raw;
}

function clearErrors() {
  for (const s of $("create-form").querySelectorAll(".field-error")) s.textContent = "";
  for (const i of $("create-form").querySelectorAll(".invalid")) i.classList.remove("invalid");
  $("c-msg").textContent = "";
  $("c-msg").className = "hint";
}

/** The input that shows a message about this dotted field: itself, else the closest enclosing section with an input,
 * else the first input inside it, else the JSON box. */
function inputFor(field) {
  const inputs = [...$("create-form").querySelectorAll("[data-field]")].filter((i) => i.dataset.field !== "*");
  const exact = inputs.find((i) => i.dataset.field === field);
  if (exact) return exact;
  const parents = inputs.filter((i) => field.startsWith(i.dataset.field + ".")).sort((a, b) => b.dataset.field.length - a.dataset.field.length);
  if (parents.length) return parents[0];
  const inside = inputs.find((i) => i.dataset.field.startsWith(field + "."));
  return inside || $("c-json");
}

export function showFieldErrors(detail) {
  for (const d of detail) {
    let f = String(d.field ?? (d.loc || []).filter((p) => p !== "body").join("."));
    f = f.replace(/^config\.?/, "") || "*";
    const input = f === "preset" ? $("c-preset") : (f === "*" ? $("c-json") : inputFor(f));
    input.classList.add("invalid");
    const span = $("create-form").querySelector(`.field-error[data-error-for="${CSS.escape(input.dataset.field)}"]`);
    const text = (input.dataset.field === f ? "" : f + ": ") + d.msg;
    span.textContent = span.textContent ? span.textContent + "; " + text : text;
  }
}

async function submit() {
  clearErrors();
  let config = {};
  const json = $("c-json").value.trim();
  if (json) {
    try {
      config = JSON.parse(json);
      if (!config || typeof config !== "object" || Array.isArray(config)) throw new Error("must be a JSON object of config sections");
    } catch (e) {
      showFieldErrors([{ field: "*", msg: "not a JSON object: " + e.message }]);
      return;
    }
  }
  const fields = {};
  for (const input of $("c-fields").querySelectorAll("[data-field]")) {
    const v = valueOf(input);
    if (v !== undefined) setPath(fields, input.dataset.field, v);
  }
  config = merge(config, fields);
  const preset = $("c-preset").value;
  const body = preset ? { preset, config } : { config };
  $("c-submit").disabled = true;
  try {
    const run = await api("/runs", { method: "POST", body });
    const where = run.queue_position ? `queued, #${run.queue_position}` : run.status;
    feedback(`created run ${run.id} (${run.name}) from ${preset ? "preset " + preset : "the schema defaults"}: ${where}`);
    $("c-msg").textContent = "created " + run.id;
    S.lastCreated = run.id;
    onCreated(run.id);
  } catch (e) {
    if (e instanceof ApiError && e.status === 422 && Array.isArray(e.body?.detail)) {
      showFieldErrors(e.body.detail);
      $("c-msg").textContent = "not created: see the fields marked in red";
      $("c-msg").className = "field-error";
    } else {
      $("c-msg").textContent = "not created: " + (e instanceof ApiError ? messageOf(e.body, e.message) : e);
      feedback("run not created: " + e.message, "error");
    }
  } finally {
    $("c-submit").disabled = false;
  }
}
