// A minimal in-page test runner: test(name, fn) registers, run() executes in order and writes
// every result to the page (for the screenshot) and as JSON to #results-json (for run.py).

const tests = [];
const violations = [];
document.addEventListener("securitypolicyviolation", (e) => violations.push(`${e.violatedDirective} ${e.blockedURI}`));

export function test(name, fn) { tests.push({ name, fn }); }

export class AssertionError extends Error {}

export function assert(cond, message) { if (!cond) throw new AssertionError(message); }

export function assertEqual(actual, expected, what) {
  if (actual !== expected) throw new AssertionError(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

/** Awaits `promise`, expects it to reject with an error of `code` (and `messagePart` in its message). */
export async function rejects(promise, code, messagePart, what) {
  let value;
  try {
    value = await promise;
  } catch (e) {
    if (code && e.code !== code) throw new AssertionError(`${what}: expected error code ${code}, got ${e.code} (${e.name}: ${e.message})`);
    if (messagePart && !String(e.message).includes(messagePart)) throw new AssertionError(`${what}: message "${e.message}" lacks "${messagePart}"`);
    return e;
  }
  throw new AssertionError(`${what}: expected a ${code} error, but it succeeded${value && value.plaintext ? " and returned plaintext" : ""}`);
}

export async function fetchBytes(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`GET ${path}: ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

export async function fetchText(path) {
  const r = await fetch(path);
  if (!r.ok) throw new Error(`GET ${path}: ${r.status}`);
  return r.text();
}

export const artifacts = {};

/** Hands bytes to run.py (base64 in the results) for checks with real tools (ffprobe, zipfile). */
export function artifact(name, bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  artifacts[name] = btoa(s);
}

export async function run() {
  const list = document.getElementById("results");
  const results = [];
  for (const t of tests) {
    const li = document.createElement("li");
    li.textContent = t.name;
    list.append(li);
    const started = performance.now();
    let ok = true;
    let detail = "";
    try {
      await t.fn();
    } catch (e) {
      ok = false;
      detail = `${e.name}: ${e.message}`;
    }
    const ms = Math.round(performance.now() - started);
    li.className = ok ? "ok" : "fail";
    const d = document.createElement("div");
    d.className = "detail";
    d.textContent = (detail ? detail + " " : "") + `(${ms} ms)`;
    li.append(d);
    results.push({ name: t.name, ok, detail, ms });
  }
  results.push({ name: "no Content-Security-Policy violations", ok: violations.length === 0, detail: violations.join("; ") });
  const failed = results.filter((r) => !r.ok).length;
  document.getElementById("summary").textContent = `${results.length - failed} passed, ${failed} failed`;
  document.getElementById("results-json").textContent = JSON.stringify(results);
  document.getElementById("artifacts-json").textContent = JSON.stringify(artifacts);
  document.body.dataset.state = "done";
}
