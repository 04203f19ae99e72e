// The service's API as the page uses it: the token, fetch with the bearer header, the connection's state and the
// server-sent-event reader. The token stays in this browser: localStorage, or the URL fragment #token=... (a fragment
// is never sent to any server); it goes only into the Authorization header of requests to this page's own origin.

const TOKEN_KEY = "tether-token";

export function hashParams() { return new URLSearchParams(location.hash.slice(1)); }

/** Update keys of the URL fragment (null removes one) without reloading or adding history entries. */
export function setHash(updates) {
  const p = hashParams();
  for (const [k, v] of Object.entries(updates)) (v == null || v === "") ? p.delete(k) : p.set(k, v);
  history.replaceState(null, "", "#" + p.toString());
}

export const auth = { token: hashParams().get("token") || localStorage.getItem(TOKEN_KEY) || "" };

export function saveToken(token) {
  auth.token = token;
  if (token) localStorage.setItem(TOKEN_KEY, token); else localStorage.removeItem(TOKEN_KEY);
  if (hashParams().has("token")) setHash({ token: token || null });  // the fragment would win at the next load
}

/** The connection: "ok", "offline" (fetch failed, or 503: the server or its Redis is away) or "auth" (401/403). */
export const conn = { state: "ok", reason: "", status: 0, listeners: [] };

export function setConn(state, reason = "", status = 0) {
  const changed = conn.state !== state || conn.reason !== reason;
  Object.assign(conn, { state, reason, status });
  if (changed) for (const f of conn.listeners) f(conn);
}

export class ApiError extends Error {
  constructor(status, body, message) { super(message); this.status = status; this.body = body; }
}

export function messageOf(body, fallback = "") {
  if (body && typeof body.detail === "string") return body.detail;
  if (body && typeof body.message === "string") return body.message;
  return fallback || (body ? JSON.stringify(body) : "");
}

async function readBody(r) {
  const text = await r.text().catch(() => "");
  try { return JSON.parse(text); } catch { return text ? { detail: text.slice(0, 500) } : {}; }
}

export function authHeaders(extra = {}) { return { Authorization: "Bearer " + auth.token, ...extra }; }

/** Sort the outcome of a response into the connection state; true when the server answered normally. */
export async function classify(r) {
  if (r.status === 503) {
    const b = await readBody(r);
    setConn("offline", messageOf(b, "503 service unavailable"), 503);
    return { ok: false, error: new ApiError(503, b, "503: " + messageOf(b, "service unavailable")) };
  }
  if (r.status === 401 || r.status === 403) {
    const b = await readBody(r);
    const why = r.status === 401 ? "no token: enter the service's API token above" : "token rejected (403): it is not this service's token";
    setConn("auth", why, r.status);
    return { ok: false, error: new ApiError(r.status, b, r.status + ": " + messageOf(b, why)) };
  }
  setConn("ok");
  if (!r.ok) {
    const b = await readBody(r);
    return { ok: false, error: new ApiError(r.status, b, r.status + ": " + messageOf(b, r.statusText)) };
  }
  return { ok: true };
}

/** A JSON request to the service. Throws ApiError (status 0 when the server could not be reached). */
export async function api(path, { method = "GET", body, as = "json" } = {}) {
  let r;
  const headers = authHeaders(body === undefined ? {} : { "Content-Type": "application/json" });
  try {
    r = await fetch(path, { method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    setConn("offline", "the server is unreachable");
    throw new ApiError(0, null, "the server is unreachable (" + (e.message || e) + ")");
  }
  const c = await classify(r);
  if (!c.ok) throw c.error;
  if (as === "blob") return r.blob();
  return r.status === 204 ? null : r.json();
}

/** Server-sent events of a fetch() response body (EventSource cannot send the Authorization header): yields
 * {event, data, id} per event and {event: "comment"} per comment line (the server's keep-alives). */
export async function* sseEvents(response) {
  const reader = response.body.getReader();
  const dec = new TextDecoder();
  let buf = "", ev = { event: "message", data: [], id: null };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        let line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {  // end of an event
          if (ev.data.length) yield { event: ev.event, data: ev.data.join("\n"), id: ev.id };
          ev = { event: "message", data: [], id: null };
        } else if (line.startsWith(":")) {
          yield { event: "comment" };
        } else {
          const c = line.indexOf(":");
          const field = c < 0 ? line : line.slice(0, c);
          let val = c < 0 ? "" : line.slice(c + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "event") ev.event = val;
          else if (field === "data") ev.data.push(val);
          else if (field === "id") ev.id = val;
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

/** Compare two Redis stream ids "<ms>-<seq>" (or "<ms>"): < 0, 0, > 0. */
export function cmpId(a, b) {
  const pa = String(a).split("-").map(BigInt), pb = String(b).split("-").map(BigInt);
  for (let i = 0; i < 2; i++) {
    const x = pa[i] ?? 0n, y = pb[i] ?? 0n;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

export const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
