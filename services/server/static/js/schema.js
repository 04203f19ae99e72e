// The run config's schema as the service publishes it (GET /openapi.json, public): a field's default and description,
// so the page shows what a config that leaves a field out actually runs with, and says what each field means.
import { getPath } from "./ui.js";

let schemas = null;

export async function loadSchema() {
  try {
    const r = await fetch("/openapi.json", { cache: "no-store" });
    if (r.ok) schemas = (await r.json()).components?.schemas || null;
  } catch { /* offline: retried by the caller */ }
  return !!schemas;
}

function deref(node) {
  for (let i = 0; node && i < 20; i++) {
    if (node.$ref) node = schemas[node.$ref.split("/").pop()];
    else if (node.allOf && node.allOf.length === 1) node = node.allOf[0];
    else break;
  }
  return node;
}

/** The schema of a dotted config field ("kl.target"), or null. */
export function fieldSchema(path) {
  if (!schemas) return null;
  let node = deref(schemas.ServiceRunConfig || schemas.TetherConfig);
  for (const k of path.split(".")) {
    const props = node && node.properties;
    if (!props || !props[k]) return null;
    node = deref(props[k]);
  }
  return node;
}

/** The schema's default of a field as the service applies it (undefined when unknown): a section's own default in the
 * service's schema wins over the section model's field defaults (ServiceRunConfig's guard defaults to enabled: true while
 * GuardConfig.enabled defaults to false). */
export function fieldDefault(path) {
  if (!schemas) return undefined;
  const parts = path.split(".");
  let node = deref(schemas.ServiceRunConfig || schemas.TetherConfig);
  for (let i = 0; i < parts.length; i++) {
    const raw = node && node.properties && node.properties[parts[i]];
    if (!raw) return undefined;
    if (i < parts.length - 1 && raw.default && typeof raw.default === "object") {
      const v = getPath(raw.default, parts.slice(i + 1).join("."));
      if (v !== undefined) return v;
    }
    node = deref(raw);
  }
  return node?.default;
}

/** A config's value of a field, else its default (undefined when neither is known). */
export function cfgValue(config, path) {
  const v = getPath(config || {}, path);
  return v !== undefined ? v : fieldDefault(path);
}

export const describe = (path) => fieldSchema(path)?.description || "";
