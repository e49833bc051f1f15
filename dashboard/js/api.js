// The collector's admin API (DASHBOARD-CONTRACT.md, docs/API.md "Admin API"): JSON over the same
// origin, the session in an HttpOnly cookie the page never sees. Every call rejects with ApiError
// (status, the server's {"error"} text) on a non-2xx answer; 401 also calls the onUnauthorized hook.

export class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.retryAfter = retryAfter ?? null;
  }
}

const V1 = "/api/v1";
let onUnauthorized = () => {};

/** Called with the ApiError whenever the server answers 401 (session gone). */
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

async function call(method, path, { body, query, raw } = {}) {
  let url = V1 + path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
    const s = q.toString();
    if (s) url += "?" + s;
  }
  const init = { method, credentials: "same-origin", headers: {}, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(url, init);
  } catch (e) {
    throw new ApiError(0, `the collector did not answer (${e.message})`);
  }
  if (!r.ok) {
    let text = `${r.status} ${r.statusText}`;
    try {
      const j = await r.json();
      if (j && typeof j.error === "string") text = j.error;
    } catch { /* not JSON */ }
    const err = new ApiError(r.status, text, r.headers.get("Retry-After"));
    if (r.status === 401 && path !== "/login") onUnauthorized(err);
    throw err;
  }
  if (raw) return r;
  if (r.status === 204) return null;
  return r.json();
}

export const api = {
  /** → {name, role, idleMinutes} */
  login: (name, password, totp) => call("POST", "/login", { body: totp ? { name, password, totp } : { name, password } }),
  logout: () => call("POST", "/logout"),
  /** → {name, role, idleMinutes, ownKEKIDs} */
  session: () => call("GET", "/session"),
  /** → {agents: [{id, createdMs, lastCaptureMs, kekIDs, sealedTo}], next} */
  agents: (after, limit = 100) => call("GET", "/agents", { query: { after, limit } }),
  /** → {items: [{id, agent, kind, timeMs, sequence, dekID, kekID, bytes, sealedTo}], next}
   *  q: {agent, kind, since, until, order, after, limit} */
  captures: (q) => call("GET", "/captures", { query: q }),
  /** The record stream of the DEK records and sealed blobs asked for (decryptor only).
   *  → {bytes: Uint8Array, missing: number} */
  async sealed(blobs, deks) {
    const r = await call("POST", "/sealed", { body: { blobs, deks }, raw: true });
    return { bytes: new Uint8Array(await r.arrayBuffer()), missing: Number(r.headers.get("X-Custos-Missing") || 0) };
  },
  /** Payload bytes of an item sealed to the collector's own KEK (mixed fleet). */
  async plain(blobID) {
    const r = await call("GET", `/captures/${encodeURIComponent(blobID)}/plain`, { raw: true });
    return new Uint8Array(await r.arrayBuffer());
  },
  /** → {entries: [{id, timeMs, actor, action, detail}], next} (auditor only) */
  audit: (before, limit = 100) => call("GET", "/audit", { query: { before, limit } }),
  /** Tells the collector's audit log what the browser did (marked client-reported there). */
  clientReport: (action, count, detail = "") =>
    call("POST", "/client-report", { body: { action, count, detail: detail.slice(0, 500) } }),
};

/** Loads every page of a cursor listing (`fetchPage(cursor)` → {list, next}), up to `max` items. */
export async function allPages(fetchPage, max = 100000) {
  const out = [];
  let cursor;
  do {
    const { list, next } = await fetchPage(cursor);
    out.push(...list);
    cursor = next;
  } while (cursor !== null && cursor !== undefined && out.length < max);
  return out;
}
