// DOM helpers: elements are built with properties and text nodes only (never innerHTML), so
// nothing from the network or a decrypted capture is ever parsed as markup; and every text they
// show goes through safeText, so no control or bidi character reaches the page as it is.

/**
 * Whether code point `cp` is shown escaped: the rules of CustosBase.SafeText.needsEscape
 * (Sources/CustosBase/SafeText.swift). C0 and C1 controls and DEL (ECMA-48 §5); the bidirectional
 * formatting characters of Unicode UAX #9 §2 (U+061C, U+200E, U+200F, U+202A–U+202E,
 * U+2066–U+2069: they reorder what follows, e.g. `exe.txt` shown as `txt.exe`); U+2028, U+2029;
 * U+FEFF.
 */
export function needsEscape(cp) {
  return cp <= 0x1f || (cp >= 0x7f && cp <= 0x9f) || cp === 0x061c || cp === 0x200e || cp === 0x200f ||
    (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069) || cp === 0x2028 || cp === 0x2029 || cp === 0xfeff;
}

/**
 * `text` with every character of needsEscape written `\u{XX}` (uppercase hex code point), as
 * SafeText.escaped writes it: the reviewer sees that the title held U+202E instead of text it
 * reordered. Idempotent; plain text comes back unchanged. Non-strings are converted first.
 */
export function safeText(text) {
  const s = String(text);
  let out = "";
  for (const c of s) {
    const cp = c.codePointAt(0);
    out += needsEscape(cp) ? `\\u{${cp.toString(16).toUpperCase()}}` : c;
  }
  return out;
}

/** Sets `el`'s text to `text` escaped (safeText): use instead of assigning textContent. */
export function setText(el, text) { el.textContent = safeText(text); }

/** Attributes whose value is shown to the reader (tooltips, labels): escaped like text. */
const SHOWN_ATTRIBUTES = new Set(["title", "alt", "placeholder", "aria-label"]);

/** h("div", {className, dataset: {testid}, onclick}, child…): children are nodes or strings. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "dataset") Object.assign(el.dataset, v);
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "textContent") el.textContent = safeText(v);
    else if (k === "className" || k === "value" || k === "checked" || k === "disabled" || k === "hidden" || k === "type" || k === "selected") el[k] = v;
    else el.setAttribute(k, v === true ? "" : SHOWN_ATTRIBUTES.has(k) ? safeText(v) : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(safeText(c)));
  }
}

/** The masked value: the text "<Encrypted>" (test hook data-testid="encrypted"). */
export function encrypted() { return h("span", { className: "encrypted", dataset: { testid: "encrypted" } }, "<Encrypted>"); }

const two = (n) => String(n).padStart(2, "0");
/** Local date and time, to the second (ms since the epoch). */
export function fmtTime(ms) {
  if (ms === null || ms === undefined) return "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}
export function fmtClock(ms) {
  const d = new Date(ms);
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

/** `<input type=datetime-local>` value ↔ ms (local time). */
export function toLocalInput(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return "";
  const d = new Date(ms);
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())}T${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}
export function fromLocalInput(v) {
  if (!v) return null;
  const t = new Date(v).getTime();
  return Number.isFinite(t) ? t : null;
}

/** Short id for display (the full id in the title attribute). */
export function shortID(id) { return h("code", { title: id }, id.length > 12 ? id.slice(0, 12) + "…" : id); }

export function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = h("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
