// The dashboard's pages (hash routes): #/ recent captures, #/agents, #/timeline?agent=…,
// #/player?agent=…&from=…&to=…, #/keystrokes?…, #/live, #/audit; the login form, the Decrypt
// dialog, Lock, the idle-lock setting. Test hooks are data-testid attributes (issue 15).

import { allPages, api, ApiError, setUnauthorizedHandler } from "./api.js";
import * as exporter from "./export.js";
import { PROTECT_COMMAND } from "./keys.js";
import * as media from "./media.js";
import { chunkText } from "./payload.js";
import { MonitorPlayer } from "./player.js";
import { isValidUserName } from "./format.js";
import { download, encrypted, fmtClock, fmtTime, fromLocalInput, h, safeText, setText, shortID, toLocalInput } from "./ui.js";
import * as vault from "./vault.js";

const $ = (id) => document.getElementById(id);
const main = $("main");
let session = null;
let page = null; // {cleanup(), onVault(event)}

// ---- notices ----
function notice(text, kind = "") {
  const n = $("notice");
  setText(n, text);
  n.className = "notice " + kind;
  n.hidden = !text;
}
function errorText(e) {
  if (e instanceof ApiError && e.status === 403) return `Not allowed for your role (${session?.role}): ${e.message}`;
  return e?.message ?? String(e);
}

// ---- login ----
function showLogin(message) {
  session = null;
  leavePage();
  $("top").hidden = true;
  notice("");
  const error = h("p", { className: "error", dataset: { testid: "login-error" }, role: "alert", hidden: !message }, message ?? "");
  const name = h("input", { type: "text", id: "username", dataset: { testid: "username" }, autocomplete: "username", required: true });
  const password = h("input", { type: "password", id: "password", dataset: { testid: "password" }, autocomplete: "current-password", required: true });
  const totp = h("input", { type: "text", id: "totp", dataset: { testid: "totp" }, inputmode: "numeric", autocomplete: "one-time-code", pattern: "[0-9]{6}" });
  const form = h("form", { className: "login", onsubmit: async (ev) => {
    ev.preventDefault();
    error.hidden = true;
    try {
      await api.login(name.value, password.value, totp.value.trim() || undefined);
      password.value = "";
      await start();
    } catch (e) {
      setText(error, e instanceof ApiError && e.status === 429
        ? `Too many attempts; try again${e.retryAfter ? ` in ${e.retryAfter} s` : " later"}.` : errorText(e));
      error.hidden = false;
    }
  } },
  h("h1", {}, "Custos"),
  h("label", {}, "Name", name),
  h("label", {}, "Password", password),
  h("label", {}, "One-time code (if your account has one)", totp),
  error,
  h("button", { type: "submit", className: "primary", dataset: { testid: "login" } }, "Log in"));
  main.replaceChildren(form);
  name.focus();
}

async function start() {
  session = await api.session();
  $("top").hidden = false;
  setText($("whoami"), `${session.name} (${session.role})`);
  $("decrypt-button").hidden = session.role !== "decryptor";
  $("nav-audit").hidden = session.role !== "auditor";
  $("idle-minutes").value = vault.idleMinutes();
  updateKeyState();
  route();
}

setUnauthorizedHandler(() => {
  if (!session) return;
  vault.lock("session ended", false, true);
  showLogin("Your session ended (idle or expired): log in again.");
});

// ---- header: decrypt, lock, settings, logout ----
function updateKeyState() {
  const unlocked = vault.isUnlocked();
  const s = $("key-state");
  setText(s, unlocked ? `Unlocked: KEK ${vault.unlockedKEK().slice(0, 12)}…` : "Locked");
  s.title = unlocked ? safeText(vault.unlockedKEK()) : "";
  s.className = "key-state" + (unlocked ? " unlocked" : "");
  $("lock-button").disabled = !unlocked;
  if (!unlocked) showKeyWarning(false);
}

/** The warning, while unlocked, that the key file had no passphrase (keys.js `unprotected`). */
function showKeyWarning(unprotected, passphraseGiven = false) {
  const w = $("key-warning");
  setText(w, unprotected
    ? `Warning: this key file is not protected by a passphrase${passphraseGiven ? " (the passphrase you typed was not used)" : ""}: ` +
      `anyone who copies it can decrypt every capture. Protect it with: ${PROTECT_COMMAND}`
    : "");
  w.hidden = !unprotected;
}

$("decrypt-button").addEventListener("click", () => {
  $("decrypt-error").hidden = true;
  $("decrypt-dialog").showModal();
});
$("decrypt-cancel").addEventListener("click", () => {
  $("passphrase").value = "";
  $("key-file").value = "";
  $("decrypt-dialog").close();
});
$("decrypt-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = $("decrypt-error");
  err.hidden = true;
  const file = $("key-file").files[0];
  const pass = $("passphrase");
  const submit = $("decrypt-submit");
  if (!file) { setText(err, "Choose the private key file (keypair.pem)."); err.hidden = false; return; }
  submit.disabled = true;
  try {
    const { unprotected } = await vault.unlock(file, pass.value);
    showKeyWarning(unprotected, pass.value !== "");
    pass.value = "";
    $("key-file").value = "";
    $("decrypt-dialog").close();
  } catch (e) {
    setText(err, e.message);
    err.hidden = false;
    pass.select();
  } finally {
    submit.disabled = false;
  }
});
$("lock-button").addEventListener("click", () => vault.lock("lock button"));
$("idle-minutes").addEventListener("change", (ev) => {
  try { vault.setIdleMinutes(ev.target.value); notice(""); } catch (e) { notice(e.message, "error"); ev.target.value = vault.idleMinutes(); }
});
$("logout-button").addEventListener("click", async () => {
  vault.lock("logout", true, true);
  try { await api.logout(); } catch { /* gone anyway */ }
  showLogin("Logged out.");
});

vault.subscribe((e) => {
  if (e.type === "unlock" || e.type === "lock") {
    updateKeyState();
    if (e.type === "lock" && e.reason === "idle") notice("The key was forgotten after the idle time; Decrypt again to see the captures.");
    if (e.type === "unlock") notice("");
  }
  if (page?.onVault && (e.type === "unlock" || e.type === "lock")) page.onVault(e);
});

// ---- routing ----
function leavePage() {
  if (page?.cleanup) page.cleanup();
  page = null;
}

function route() {
  if (!session) return;
  leavePage();
  notice("");
  const [path, query] = (location.hash.slice(1) || "/").split("?");
  const params = new URLSearchParams(query ?? "");
  const name = path.replace(/^\//, "") || "home";
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === name || (name === "timeline" && a.dataset.nav === "agents"));
  const pages = { home: homePage, agents: agentsPage, timeline: timelinePage, player: playerPage, keystrokes: keystrokesPage, live: livePage, audit: auditPage };
  (pages[name] ?? homePage)(params);
}
addEventListener("hashchange", route);

function setPage(el, hooks = {}) {
  main.replaceChildren(el);
  page = hooks;
}

function numberParam(params, key) {
  const v = params.get(key);
  return v === null || v === "" || !Number.isFinite(Number(v)) ? null : Number(v);
}

function needKeyHint(items) {
  if (!vault.isUnlocked() && items.some((i) => i.sealedTo !== "collector")) {
    return session.role === "decryptor" ? "Items marked <Encrypted> are end-to-end encrypted: use Decrypt… with your private key."
      : "Items marked <Encrypted> are end-to-end encrypted; only a decryptor can open them.";
  }
  return "";
}

// ---- users (graphical sessions: docs/FORMAT.md "Sealed session blob") ----

/** The session of a listing row as shown: `user` and display (null for captures without one). */
function userCell(item) {
  if (!item.user) return h("span", { className: "muted", title: "no graphical session named (a plain sealed blob)" }, "—");
  return h("span", { className: "user", dataset: { testid: "user", user: item.user } }, item.user,
    item.display ? h("span", { className: "muted" }, ` ${item.display}`) : null);
}

/** A user filter (`user=`), checked with the format's one rule (CustosBase.UserName) before it is sent. */
function userInput(value) {
  return h("input", { type: "text", value, placeholder: "user name", size: 14, dataset: { testid: "user-filter" } });
}

/** The filter's value, or throws naming what is wrong (shown in the page notice). */
function userValue(input) {
  const v = input.value.trim();
  if (v && !isValidUserName(v)) throw new Error("user: expected a user name: 1-128 UTF-8 bytes without '/', control or bidirectional characters, not '.' or '..'");
  return v;
}

// ---- capture tiles ----

/** A tile (data-testid capture) for one listing row; body() redraws from the vault. */
function tile(item) {
  const body = h("div", { className: "body" });
  const el = h("article", { className: "tile", dataset: { testid: "capture", kind: item.kind, blobId: item.id, agent: item.agent, user: item.user ?? "" } },
    h("header", {}, h("span", {}, fmtTime(item.timeMs)), h("a", { href: `#/timeline?agent=${encodeURIComponent(item.agent)}` }, item.agent),
      item.user ? h("a", { href: `#/timeline?${new URLSearchParams({ agent: item.agent, user: item.user })}` }, userCell(item)) : null,
      h("span", {}, item.kind), h("span", {}, `#${item.sequence}`),
      item.sealedTo === "collector" ? h("span", { className: "badge collector", title: "sealed to the collector's own key (encryption off on this agent)" }, "collector key") : null),
    body);
  el.item = item;
  el.body = body;
  fillTile(el);
  return el;
}

/** Names, in the page notice, the items whose stored bytes the collector cannot read. */
function noticeUnreadable(result) {
  const ids = result?.unreadable ?? [];
  if (!ids.length) return;
  notice(`The collector cannot read ${ids.length} item${ids.length === 1 ? "" : "s"} (blob file missing or damaged): ${ids.slice(0, 5).join(", ")}${ids.length > 5 ? ", …" : ""}`, "error");
}

/** Fills a tile's body from the vault: <Encrypted>, an error, keystroke text, or a frame canvas (drawn later). */
function fillTile(el) {
  const item = el.item;
  const d = vault.get(item.id);
  el.dataset.state = d ? (d.error ? "error" : "open") : "masked";
  if (!d) {
    el.body.replaceChildren(encrypted());
    return;
  }
  if (d.error) {
    el.body.replaceChildren(h("span", { className: "error", dataset: { testid: "item-error" } }, `Cannot open: ${d.error.message}`));
    return;
  }
  const p = d.payload;
  if (p.type === "keys") {
    el.body.replaceChildren(h("div", { className: "window", title: p.chunk.wmClass }, p.chunk.windowTitle || "(no window title)"),
      h("pre", { className: "keys", dataset: { testid: "keystrokes" } }, chunkText(p.chunk)));
  } else if (p.type === "frame" || p.type === "video") {
    const m = p.meta;
    const canvas = h("canvas", { width: m.width, height: m.height, dataset: { testid: "frame", pending: "1" } });
    el.body.replaceChildren(canvas, h("div", { className: "meta" }, `monitor ${m.monitor} ${m.monitorName} · ${m.width}×${m.height}${p.type === "video" ? ` · packet ${m.packetIndex}${m.keyframe ? " (key)" : ""}` : ""}`));
    el.canvas = canvas;
  } else {
    el.body.replaceChildren(h("span", { className: "muted" }, `${p.bytes.length} bytes (generic)`));
  }
}

/** Opens what can be opened among the tiles' items, then fills and draws them. */
async function openTiles(tiles, isCurrent) {
  const items = tiles.map((t) => t.item);
  try {
    noticeUnreadable(await vault.open(items));
  } catch (e) {
    notice(`Decrypting failed: ${errorText(e)}`, "error");
  }
  if (!isCurrent()) return;
  for (const t of tiles) fillTile(t);
  const screens = tiles.filter((t) => t.canvas);
  if (!screens.length) return;
  try {
    await media.completeGroups(screens.map((t) => t.item));
  } catch (e) {
    notice(`Looking up earlier video packets failed: ${errorText(e)}`, "error");
  }
  const byID = new Map(screens.map((t) => [t.item.id, t]));
  for (const item of media.drawOrder(screens.map((t) => t.item))) {
    if (!isCurrent()) return;
    const t = byID.get(item.id);
    try {
      const ok = await media.drawItem(item, t.canvas);
      if (ok) delete t.canvas.dataset.pending;
      else t.body.append(h("span", { className: "muted" }, "(this packet's keyframe is not available)"));
    } catch (e) {
      t.body.append(h("span", { className: "error" }, `Cannot show: ${e.message}`));
    }
  }
}

/** A paged grid of capture tiles for `query` (newest first). */
function captureGrid(query, pageSize = 24) {
  const grid = h("div", { className: "grid", dataset: { testid: "captures" } });
  const status = h("p", { className: "muted" });
  const more = h("button", { type: "button", className: "more", dataset: { testid: "more" }, hidden: true }, "Older");
  let next;
  let tiles = [];
  let generation = 0;
  const load = async () => {
    more.disabled = true;
    const g = generation;
    try {
      const r = await api.captures({ ...query, order: "desc", limit: pageSize, after: next });
      if (g !== generation) return;
      next = r.next;
      const fresh = r.items.map(tile);
      tiles.push(...fresh);
      grid.append(...fresh);
      setText(status, tiles.length ? `${tiles.length} captures${next ? " (more below)" : ""}` : "No captures.");
      more.hidden = !next;
      const hint = needKeyHint(r.items);
      if (hint) notice(hint);
      await openTiles(fresh, () => g === generation);
    } catch (e) {
      setText(status, `Listing failed: ${errorText(e)}`);
      status.className = "error";
    } finally {
      more.disabled = false;
    }
  };
  more.addEventListener("click", load);
  const exportButton = h("button", { type: "button", dataset: { testid: "export" }, onclick: async () => {
    exportButton.disabled = true;
    try {
      const { blob, counts } = await exporter.exportZip(tiles.map((t) => t.item));
      download(blob, `custos-export-${exporter.stamp(Date.now())}.zip`);
      notice(`Exported ${counts.frames} frames, ${counts.videoFiles} video files (${counts.videoPackets} packets), ${counts.keystrokeChunks} keystroke chunks${counts.notDecrypted ? `; ${counts.notDecrypted} items not decrypted were left out` : ""}.`);
    } catch (e) {
      notice(`Export failed: ${e.message}`, "error");
    } finally {
      exportButton.disabled = false;
    }
  } }, "Export selection (zip)");
  const el = h("section", {}, h("div", { className: "toolbar" }, exportButton, status), grid, more);
  load();
  return {
    el,
    onVault: () => {
      generation++;
      const g = generation;
      for (const t of tiles) { t.canvas = null; fillTile(t); }
      openTiles(tiles, () => g === generation);
    },
    cleanup: () => { generation++; },
  };
}

// ---- pages ----
function homePage() {
  const grid = captureGrid({});
  setPage(h("div", {}, h("h1", {}, "Recent captures of all agents"), grid.el), grid);
}

function timelinePage(params) {
  const agent = params.get("agent") ?? "";
  const since = numberParam(params, "since"), until = numberParam(params, "until");
  const kind = params.get("kind") ?? "";
  const user = params.get("user") ?? "";
  const sinceIn = h("input", { type: "datetime-local", step: 1, value: toLocalInput(since) });
  const untilIn = h("input", { type: "datetime-local", step: 1, value: toLocalInput(until) });
  const kindIn = h("select", {}, ["", "screen", "keystrokes", "generic", "activity"].map((k) => h("option", { value: k, selected: k === kind }, k || "all kinds")));
  const userIn = userInput(user);
  const apply = () => {
    const q = new URLSearchParams({ agent });
    try { const u = userValue(userIn); if (u) q.set("user", u); } catch (e) { notice(e.message, "error"); return; }
    const s = fromLocalInput(sinceIn.value), u = fromLocalInput(untilIn.value);
    if (s !== null) q.set("since", s);
    if (u !== null) q.set("until", u);
    if (kindIn.value) q.set("kind", kindIn.value);
    location.hash = "#/timeline?" + q;
  };
  const grid = captureGrid({ agent, since, until, kind, user });
  const withUser = new URLSearchParams({ agent, ...(user ? { user } : {}) });
  setPage(h("div", {},
    h("h1", {}, "Timeline of ", h("code", {}, agent), user ? [" · user ", h("code", {}, user)] : null),
    h("div", { className: "toolbar" }, h("label", {}, "From", sinceIn), h("label", {}, "To", untilIn), h("label", {}, "Kind", kindIn),
      h("label", {}, "User", userIn),
      h("button", { type: "button", onclick: apply }, "Apply"),
      h("a", { href: `#/player?${withUser}` }, "Session player"),
      h("a", { href: `#/keystrokes?${withUser}` }, "Keystrokes")),
    grid.el), grid);
}

const SEALED_TO = { e2ee: "on (end-to-end)", collector: "off (collector's key)", mixed: "mixed (both)", none: "nothing stored yet" };

function agentsPage() {
  const body = h("tbody");
  const more = h("button", { type: "button", className: "more", hidden: true }, "More agents");
  const status = h("p", { className: "muted" });
  let next;
  let alive = true;
  const load = async () => {
    try {
      const r = await api.agents(next, 100);
      if (!alive) return;
      next = r.next;
      for (const a of r.agents) {
        const enc = encodeURIComponent(a.id);
        body.append(h("tr", { dataset: { testid: "agent", agent: a.id } },
          h("td", {}, h("a", { href: `#/timeline?agent=${enc}` }, a.id)),
          h("td", {}, fmtTime(a.createdMs)),
          h("td", {}, a.lastCaptureMs === null ? "never" : fmtTime(a.lastCaptureMs)),
          h("td", {}, SEALED_TO[a.sealedTo] ?? a.sealedTo),
          h("td", {}, a.kekIDs.length ? a.kekIDs.map((k) => [shortID(k), " "]) : "—"),
          h("td", {}, h("a", { href: `#/timeline?agent=${enc}` }, "timeline"), " · ",
            h("a", { href: `#/player?agent=${enc}` }, "player"), " · ", h("a", { href: `#/keystrokes?agent=${enc}` }, "keystrokes"))));
      }
      more.hidden = !next;
      setText(status, `${body.children.length} agents`);
    } catch (e) {
      setText(status, `Listing failed: ${errorText(e)}`);
      status.className = "error";
    }
  };
  more.addEventListener("click", load);
  setPage(h("div", {}, h("h1", {}, "Agents"), status,
    h("table", {}, h("thead", {}, h("tr", {}, ["Agent", "Added", "Last capture", "Encryption", "KEK ids", ""].map((t) => h("th", {}, t)))), body), more),
  { cleanup: () => { alive = false; } });
  load();
}

async function agentOptions(selected) {
  const agents = await allPages(async (after) => { const r = await api.agents(after, 500); return { list: r.agents, next: r.next }; }, 5000);
  return agents;
}

function keystrokesPage(params) {
  const agent = params.get("agent") ?? "";
  const since = numberParam(params, "since"), until = numberParam(params, "until");
  const windowFilter = params.get("window") ?? "";
  const user = params.get("user") ?? "";
  const userIn = userInput(user);
  const agentIn = h("select", {}, h("option", { value: "" }, "all agents"));
  agentOptions().then((list) => {
    for (const a of list) agentIn.append(h("option", { value: a.id, selected: a.id === agent }, a.id));
  }).catch(() => {});
  const sinceIn = h("input", { type: "datetime-local", step: 1, value: toLocalInput(since) });
  const untilIn = h("input", { type: "datetime-local", step: 1, value: toLocalInput(until) });
  const windowIn = h("input", { type: "text", value: windowFilter, placeholder: "window title or class contains…", dataset: { testid: "window-filter" } });
  const body = h("tbody");
  const status = h("p", { className: "muted" });
  const more = h("button", { type: "button", className: "more", hidden: true, dataset: { testid: "more" } }, "Older");
  let next;
  const rows = [];
  let generation = 0;

  const fill = (tr) => {
    const d = vault.get(tr.item.id);
    const [winCell, textCell] = [tr.cells[3], tr.cells[4]];
    if (!d) { winCell.replaceChildren(encrypted()); textCell.replaceChildren(encrypted()); tr.hidden = false; return; }
    if (d.error) { winCell.replaceChildren("—"); textCell.replaceChildren(h("span", { className: "error", dataset: { testid: "item-error" } }, `Cannot open: ${d.error.message}`)); return; }
    const c = d.payload.chunk;
    winCell.replaceChildren(h("span", { title: c.wmClass }, c.windowTitle || "(none)"));
    textCell.replaceChildren(h("pre", { className: "keys", dataset: { testid: "keystrokes" } }, chunkText(c)));
    const f = windowIn.value.trim().toLowerCase();
    tr.hidden = f !== "" && !(c.windowTitle.toLowerCase().includes(f) || c.wmClass.toLowerCase().includes(f));
  };
  const applyWindowFilter = () => { for (const tr of rows) fill(tr); setText(status, summary()); };
  const summary = () => {
    const shown = rows.filter((r) => !r.hidden).length;
    return `${rows.length} keystroke chunks loaded${rows.length !== shown ? `, ${shown} match the window filter` : ""}${next ? " (more below)" : ""}` +
      (windowIn.value.trim() && !vault.isUnlocked() ? "; the window filter applies to decrypted rows" : "");
  };
  const openRows = async (list, g) => {
    try { noticeUnreadable(await vault.open(list.map((r) => r.item))); } catch (e) { notice(`Decrypting failed: ${errorText(e)}`, "error"); }
    if (g !== generation) return;
    for (const tr of list) fill(tr);
    setText(status, summary());
  };
  const load = async () => {
    const g = generation;
    try {
      const r = await api.captures({ kind: "keystrokes", agent, user, since, until, order: "desc", limit: 100, after: next });
      if (g !== generation) return;
      next = r.next;
      const fresh = r.items.map((item) => {
        const tr = h("tr", { dataset: { testid: "capture", kind: item.kind, blobId: item.id, agent: item.agent, user: item.user ?? "" } },
          h("td", {}, fmtTime(item.timeMs)), h("td", {}, item.agent), h("td", {}, userCell(item)), h("td"), h("td"));
        tr.item = item;
        fill(tr);
        return tr;
      });
      rows.push(...fresh);
      body.append(...fresh);
      more.hidden = !next;
      setText(status, summary());
      const hint = needKeyHint(r.items);
      if (hint) notice(hint);
      await openRows(fresh, g);
    } catch (e) {
      setText(status, `Listing failed: ${errorText(e)}`);
      status.className = "error";
    }
  };
  more.addEventListener("click", load);
  windowIn.addEventListener("input", applyWindowFilter);
  const apply = () => {
    const q = new URLSearchParams();
    if (agentIn.value) q.set("agent", agentIn.value);
    try { const name = userValue(userIn); if (name) q.set("user", name); } catch (e) { notice(e.message, "error"); return; }
    const s = fromLocalInput(sinceIn.value), u = fromLocalInput(untilIn.value);
    if (s !== null) q.set("since", s);
    if (u !== null) q.set("until", u);
    if (windowIn.value.trim()) q.set("window", windowIn.value.trim());
    location.hash = "#/keystrokes?" + q;
  };
  const exportButton = h("button", { type: "button", dataset: { testid: "export" }, onclick: async () => {
    try {
      const { blob, counts } = await exporter.exportZip(rows.filter((r) => !r.hidden).map((r) => r.item));
      download(blob, `custos-keystrokes-${exporter.stamp(Date.now())}.zip`);
      notice(`Exported ${counts.keystrokeChunks} keystroke chunks.`);
    } catch (e) { notice(`Export failed: ${e.message}`, "error"); }
  } }, "Export (zip: CSV + JSON)");
  setPage(h("div", {}, h("h1", {}, "Keystrokes report"),
    h("div", { className: "toolbar" }, h("label", {}, "Agent", agentIn), h("label", {}, "User", userIn), h("label", {}, "From", sinceIn), h("label", {}, "To", untilIn),
      h("button", { type: "button", onclick: apply }, "Apply"), h("label", {}, "Window (after decrypting)", windowIn), exportButton),
    status,
    h("table", {}, h("thead", {}, h("tr", {}, ["Time", "Agent", "User", "Window", "Text"].map((t) => h("th", {}, t)))), body), more),
  {
    onVault: () => { generation++; const g = generation; for (const tr of rows) fill(tr); openRows(rows, g); },
    cleanup: () => { generation++; },
  });
  load();
}

function livePage() {
  const grid = h("div", { className: "grid", dataset: { testid: "live" } });
  const status = h("p", { className: "muted" });
  let generation = 0;
  let timer = null;
  const refresh = async () => {
    const g = ++generation;
    try {
      const agents = await allPages(async (after) => { const r = await api.agents(after, 500); return { list: r.agents, next: r.next }; }, 500);
      const latest = [];
      for (const a of agents) {
        if (a.lastCaptureMs === null) continue;
        const r = await api.captures({ agent: a.id, kind: "screen", order: "desc", limit: 1 });
        if (r.items[0]) latest.push(r.items[0]);
      }
      if (g !== generation) return;
      const tiles = latest.map(tile);
      grid.replaceChildren(...tiles);
      setText(status, `Latest screen of ${tiles.length} agents, ${fmtTime(Date.now())}; refreshes every 15 s.`);
      const hint = needKeyHint(latest);
      if (hint) notice(hint);
      await openTiles(tiles, () => g === generation);
    } catch (e) {
      setText(status, `Refresh failed: ${errorText(e)}`);
    }
  };
  timer = setInterval(refresh, 15_000);
  setPage(h("div", {}, h("h1", {}, "Live montage"), status, grid), {
    onVault: refresh,
    cleanup: () => { generation++; clearInterval(timer); },
  });
  refresh();
}

function auditPage() {
  const body = h("tbody");
  const status = h("p", { className: "muted" });
  const more = h("button", { type: "button", className: "more", hidden: true, dataset: { testid: "more" } }, "Older");
  let next;
  let alive = true;
  const load = async () => {
    try {
      const r = await api.audit(next, 100);
      if (!alive) return;
      next = r.next;
      for (const e of r.entries) {
        body.append(h("tr", { dataset: { testid: "audit-entry", action: e.action } }, h("td", {}, fmtTime(e.timeMs)), h("td", {}, e.actor),
          h("td", {}, e.action), h("td", {}, e.detail)));
      }
      more.hidden = !next;
      setText(status, `${body.children.length} entries, newest first`);
    } catch (e) {
      setText(status, errorText(e));
      status.className = "error";
    }
  };
  more.addEventListener("click", load);
  setPage(h("div", {}, h("h1", {}, "Audit report"), status,
    h("table", {}, h("thead", {}, h("tr", {}, ["Time", "Actor", "Action", "Detail"].map((t) => h("th", {}, t)))), body), more),
  { cleanup: () => { alive = false; } });
  load();
}

// ---- session player ----
const SPEEDS = [0.5, 1, 2, 4, 8, 16];

function playerPage(params) {
  const agent = params.get("agent") ?? "";
  const user = params.get("user") ?? "";
  let from = numberParam(params, "from"), to = numberParam(params, "to");
  const agentIn = h("select", { dataset: { testid: "player-agent" } }, h("option", { value: "" }, "choose an agent"));
  const userIn = userInput(user);
  const sessions = h("p", { className: "muted", dataset: { testid: "player-sessions" } });
  const fromIn = h("input", { type: "datetime-local", step: 1, value: toLocalInput(from) });
  const toIn = h("input", { type: "datetime-local", step: 1, value: toLocalInput(to) });
  const status = h("p", { className: "muted", dataset: { testid: "player-status" } });
  const stage = h("div");
  let session_ = null;
  let alive = true;

  agentOptions().then((list) => {
    for (const a of list) agentIn.append(h("option", { value: a.id, selected: a.id === agent }, a.id));
    if (agent && (from === null || to === null)) {
      const a = list.find((x) => x.id === agent);
      if (a && a.lastCaptureMs !== null) {
        to = to ?? a.lastCaptureMs + 1000;
        from = from ?? to - 3600_000;
        fromIn.value = toLocalInput(from);
        toIn.value = toLocalInput(to);
      }
    }
    if (agent && from !== null && to !== null) load();
  }).catch((e) => { setText(status, errorText(e)); });

  const apply = () => {
    const q = new URLSearchParams({ agent: agentIn.value });
    try { const u = userValue(userIn); if (u) q.set("user", u); } catch (e) { notice(e.message, "error"); return; }
    const f = fromLocalInput(fromIn.value), t = fromLocalInput(toIn.value);
    if (f !== null) q.set("from", f);
    if (t !== null) q.set("to", t);
    location.hash = "#/player?" + q;
  };

  async function load() {
    if (session_) session_.close();
    session_ = null;
    stage.replaceChildren();
    setText(status, "Loading the session's captures…");
    try {
      const items = await allPages(async (after) => {
        const r = await api.captures({ agent, user, since: from, until: to, order: "asc", limit: 500, after });
        return { list: r.items, next: r.next };
      }, 100000);
      if (!alive) return;
      const screens = items.filter((i) => i.kind === "screen"), keys = items.filter((i) => i.kind === "keystrokes");
      showSessions(items);
      setText(status, `${screens.length} screen captures, ${keys.length} keystroke chunks between ${fmtTime(from)} and ${fmtTime(to)}.`);
      const hint = needKeyHint(items);
      if (hint) {
        notice(hint);
        stage.replaceChildren(h("p", {}, "This session is ", encrypted(), ": decrypt to play it."));
        if (!vault.isUnlocked()) return;
      }
      noticeUnreadable(await vault.open(items));
      await media.completeGroups(screens);
      if (!alive) return;
      if (!items.length) { stage.replaceChildren(h("p", { className: "muted" }, "Nothing recorded in this range.")); return; }
      session_ = buildSession(items);
      stage.replaceChildren(session_.el);
      await session_.show(session_.start);
    } catch (e) {
      setText(status, `Loading failed: ${errorText(e)}`);
      status.className = "error";
    }
  }

  /** The graphical sessions (user, display) in the loaded range, each a link to play it alone. */
  function showSessions(items) {
    const found = new Map();
    for (const i of items) if (i.user) found.set(`${i.user}\u0000${i.display}`, { user: i.user, display: i.display, n: (found.get(`${i.user}\u0000${i.display}`)?.n ?? 0) + 1 });
    if (!found.size) { sessions.replaceChildren(); return; }
    const link = (s) => {
      const q = new URLSearchParams({ agent, user: s.user });
      if (from !== null) q.set("from", from);
      if (to !== null) q.set("to", to);
      return h("a", { href: `#/player?${q}`, dataset: { testid: "player-session", user: s.user } }, userCell(s), ` (${s.n})`);
    };
    sessions.replaceChildren(h("span", {}, user ? "Session of " : "Sessions in this range: ", [...found.values()].map((s, i) => [i ? ", " : "", link(s)]),
      user ? [" · ", h("a", { href: `#/player?${new URLSearchParams({ agent, ...(from !== null ? { from } : {}), ...(to !== null ? { to } : {}) })}` }, "all users")] : null));
  }

  function buildSession(items) {
    const monitors = new Map(); // monitor key → {label, packets, frames}
    const streamIDs = new Set();
    const chunks = [];
    let failed = 0;
    for (const it of items) {
      const d = vault.get(it.id);
      if (!d || d.error) { if (d?.error) failed++; continue; }
      const p = d.payload;
      if (p.type === "video" || p.type === "frame") {
        // Each session's monitors apart: two users' ":1 root" are two screens.
        const key = `${it.user ?? ""}\u0000${it.display ?? ""}\u0000${p.meta.monitor}:${p.meta.monitorName}`;
        const who = it.user ? `${it.user} ${it.display ?? ""} · ` : "";
        if (!monitors.has(key)) monitors.set(key, { label: `${who}monitor ${p.meta.monitor} ${p.meta.monitorName}`, streams: new Set(), frames: [] });
        if (p.type === "video") { monitors.get(key).streams.add(p.meta.streamID); streamIDs.add(p.meta.streamID); }
        else monitors.get(key).frames.push({ timeMs: p.meta.captureTimeMs, item: it });
      } else if (p.type === "keys") {
        chunks.push({ item: it, chunk: p.chunk });
      }
    }
    chunks.sort((a, b) => a.chunk.startMs - b.chunk.startMs);
    const views = [];
    for (const m of monitors.values()) {
      const canvas = h("canvas", { width: 16, height: 9, dataset: { testid: "player-frame" } });
      const player = new MonitorPlayer(canvas);
      const packets = media.streamPackets([...m.streams]);
      player.setPackets(packets);
      m.frames.sort((a, b) => a.timeMs - b.timeMs);
      views.push({ canvas, player, frames: m.frames, shownFrame: null, el: h("figure", {}, canvas, h("figcaption", {}, m.label)) });
    }
    // The time line spans what was recorded within [from, to] (plus the last picture's second).
    const times = items.map((i) => i.timeMs);
    const t0 = Math.max(from, Math.min(...times)), t1 = Math.min(to, Math.max(...times) + 1000);
    let t = t0, playing = false, speed = 1, raf = 0, last = 0, busy = false;
    const seek = h("input", { type: "range", min: t0, max: t1, step: 1, value: t0, dataset: { testid: "seek" } });
    const clock = h("span", { dataset: { testid: "clock" } });
    const play = h("button", { type: "button", dataset: { testid: "play" } }, "Play");
    const speedIn = h("select", { dataset: { testid: "speed" } }, SPEEDS.map((s) => h("option", { value: s, selected: s === 1 }, `${s}×`)));
    const track = h("div", { className: "track" });
    const cursor = h("div", { className: "cursor" });
    const pct = (ms) => `${Math.max(0, Math.min(100, ((ms - t0) / (t1 - t0)) * 100))}%`;
    for (const c of chunks) {
      track.append(h("div", { className: "mark", title: `${fmtTime(c.chunk.startMs)} ${c.chunk.windowTitle}`,
        style: undefined, dataset: { start: c.chunk.startMs } }));
    }
    // Positions are set through the CSSOM (style attributes would need 'unsafe-inline').
    [...track.children].forEach((mark, i) => {
      const c = chunks[i].chunk;
      mark.style.left = pct(c.startMs);
      mark.style.width = `calc(${pct(Math.max(c.endMs, c.startMs + 1))} - ${pct(c.startMs)})`;
    });
    track.append(cursor);
    const titleNow = h("div", { className: "title-now", dataset: { testid: "window-now" } });
    const typedNow = h("div", { className: "typed-now", dataset: { testid: "typed-now" } });
    const list = h("table", { className: "chunks" }, h("tbody", {}, chunks.map((c) => {
      const tr = h("tr", { dataset: { testid: "chunk", start: c.chunk.startMs } }, h("td", {}, fmtClock(c.chunk.startMs)), h("td", {}, userCell(c.item)), h("td", {}, c.chunk.windowTitle),
        h("td", {}, h("pre", { className: "keys" }, chunkText(c.chunk))));
      tr.addEventListener("click", () => { pause(); show(c.chunk.startMs); });
      c.row = tr;
      return tr;
    })));
    const exportButton = h("button", { type: "button", dataset: { testid: "export-webm" }, onclick: async () => {
      try {
        const r = await exporter.exportSessionVideo(media.streamPackets([...streamIDs]).filter((p) => p.meta.captureTimeMs <= t1), agent);
        download(r.blob, r.name);
        notice(`Exported ${r.runs} WebM file(s)${r.skipped ? `; ${r.skipped} packets after gaps could not be decoded and were left out` : ""}.`);
      } catch (e) { notice(`Export failed: ${e.message}`, "error"); }
    } }, "Export video (WebM)");

    async function show(time) {
      t = Math.max(t0, Math.min(t1, time));
      seek.value = t;
      setText(clock, `${fmtTime(t)}.${String(Math.floor(t % 1000)).padStart(3, "0")}`);
      cursor.style.left = pct(t);
      let current = null;
      for (const c of chunks) if (c.chunk.startMs <= t) current = c;
      setText(titleNow, current ? `Window: ${current.chunk.windowTitle || "(no title)"}${current.chunk.wmClass ? ` (${current.chunk.wmClass})` : ""}` : "Window: —");
      setText(typedNow, current ? current.chunk.keys.filter((k) => k.pressed !== false && k.timeMs <= t).map((k) => k.text).join("") : "");
      for (const c of chunks) c.row.classList.toggle("active", c === current);
      await Promise.all(views.map(async (v) => {
        let frame = null;
        for (const f of v.frames) if (f.timeMs <= t) frame = f;
        const video = v.player.packetAt(t);
        if (video && (!frame || video.meta.captureTimeMs >= frame.timeMs)) {
          await v.player.showAt(t);
        } else if (frame && v.shownFrame !== frame) {
          v.shownFrame = frame;
          await media.drawItem(frame.item, v.canvas);
        }
      }));
    }
    function tick(now) {
      if (!playing) return;
      const dt = last ? now - last : 0;
      last = now;
      const next = t + dt * speed;
      if (next >= t1) { show(t1); pause(); return; }
      if (!busy) { busy = true; show(next).finally(() => { busy = false; }); } else t = next;
      raf = requestAnimationFrame(tick);
    }
    function pause() { playing = false; cancelAnimationFrame(raf); setText(play, "Play"); }
    play.addEventListener("click", () => {
      if (playing) { pause(); return; }
      if (t >= t1) t = t0;
      playing = true; last = 0; setText(play, "Pause");
      raf = requestAnimationFrame(tick);
    });
    seek.addEventListener("input", () => show(Number(seek.value)));
    speedIn.addEventListener("change", () => { speed = Number(speedIn.value); });
    const el = h("div", {},
      failed ? h("p", { className: "error" }, `${failed} items could not be opened and are not shown.`) : null,
      views.length ? h("div", { className: "monitors" }, views.map((v) => v.el)) : h("p", { className: "muted" }, "No screen captures in this range."),
      h("div", { className: "transport" }, play, seek, clock, h("label", {}, "Speed ", speedIn), exportButton),
      track, titleNow, typedNow, h("h2", {}, "Keystrokes"), chunks.length ? list : h("p", { className: "muted" }, "No keystrokes in this range."));
    return { el, show, start: t0, end: t1, close: () => { pause(); for (const v of views) v.player.close(); }, get time() { return t; } };
  }

  setPage(h("div", {}, h("h1", {}, "Session player"),
    h("div", { className: "toolbar" }, h("label", {}, "Agent", agentIn), h("label", {}, "User", userIn), h("label", {}, "From", fromIn), h("label", {}, "To", toIn),
      h("button", { type: "button", dataset: { testid: "player-load" }, onclick: apply }, "Load")),
    status, sessions, stage),
  {
    onVault: (e) => { if (agent && from !== null && to !== null) load(); },
    cleanup: () => { alive = false; if (session_) session_.close(); },
  });
}

// ---- boot ----
vault.watchIdle();
try {
  await start();
} catch (e) {
  if (e instanceof ApiError && e.status === 401) showLogin();
  else { showLogin(); notice(`The collector did not answer: ${errorText(e)}`, "error"); }
}
