// The mirec explorer: plain JavaScript over the public HTTP API (no build step, no other host).
// GET /health (model, ranker), GET /users (search), POST /recommend (merged list),
// POST /interests (one column per live interest), POST /events (a click). The page refetches
// after every change; it keeps no connection open. <body data-state> is idle, loading, ready or
// error, so that a person (or a headless browser) can tell when the page has settled.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "mirecToken";
const state = {
  user: null, // a known user's id, or null when exploring a pasted history
  history: [], // the pasted history (raw item ids), oldest first
  titles: new Map(), // raw id -> title, from the history that /interests returned
  seq: 0, // the latest refresh; older answers are dropped
  needInterests: true,
};

// ---- API --------------------------------------------------------------------------------------

let tokenAsked = null; // one pending question for all requests that got a 401

function askToken(refused) {
  if (!tokenAsked) {
    tokenAsked = new Promise((resolve) => {
      const form = $("token-form");
      form.hidden = false;
      showError(refused ? "The token was refused; enter it again." : "This server requires a token.");
      form.onsubmit = (e) => {
        e.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
        form.hidden = true;
        tokenAsked = null;
        clearError();
        resolve();
      };
      $("token").focus();
    });
  }
  return tokenAsked;
}

function describe(data, text) {
  const d = data && data.detail;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).join(".")}: ${e.msg}`).join("; ");
  if (typeof d === "string") return d;
  return (text || "no details").slice(0, 300);
}

async function api(method, path, body) {
  for (;;) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    let resp;
    try {
      resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new Error(`${method} ${path}: the server cannot be reached (${e.message})`);
    }
    if (resp.status === 401) {
      if (token) sessionStorage.removeItem(TOKEN_KEY);
      await askToken(Boolean(token));
      continue;
    }
    const text = await resp.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      data = null; // not JSON: shown as text below
    }
    if (!resp.ok) throw new Error(`${method} ${path}: ${resp.status} ${describe(data, text)}`);
    return data;
  }
}

// ---- rendering --------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function showError(msg) {
  const box = $("error");
  box.textContent = msg;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

function setState(s) {
  document.body.dataset.state = s;
}

function categories(cats) {
  return el("span", { class: "cats" }, ...cats.map((c) => el("span", { class: "cat" }, c)));
}

// One clickable item: title, id and categories, then whatever ``extra`` says.
function itemRow(tag, it, extra) {
  const row = el(tag, { class: "item", "data-item-id": it.item_id, title: "record as an event" },
    el("span", { class: "title" }, it.title), " ", el("span", { class: "id" }, `#${it.item_id}`), " ",
    categories(it.categories));
  if (extra) row.append(el("div", { class: "extra" }, extra));
  row.addEventListener("click", () => recordClick(it));
  return row;
}

function interestTag(k) {
  return el("span", { class: `tag k${k % 8}` }, `interest ${k}`);
}

function renderInterests(r) {
  state.titles = new Map(r.history.map((h) => [h.item_id, h.title]));
  const box = $("interests");
  box.replaceChildren(...r.interests.map((v) => el("div", { class: `interest-col k${v.interest % 8}`,
    "data-interest": v.interest },
  el("h3", {}, interestTag(v.interest)),
  el("h4", {}, "formed by"),
  el("ul", { class: "formed" }, ...v.formed_by.map((h) => el("li", {},
    el("span", { class: "weight" }, h.weight.toFixed(2)), " ", el("span", { class: "title" }, h.title),
    " ", categories(h.categories)))),
  el("h4", {}, "retrieves"),
  el("ol", { class: "retrieved" }, ...v.items.map((it) => itemRow("li", it, `score ${it.score.toFixed(3)}`))))));
  if (!r.interests.length) box.replaceChildren(el("p", {}, "No live interest: the history is empty."));
}

function renderMerged(r) {
  const name = (id) => state.titles.get(id) || `#${id}`;
  $("merged").replaceChildren(...r.items.map((it) => {
    const because = it.because.length ? ` · because of ${it.because.map(name).join("; ")}` : "";
    const extra = el("span", {}, interestTag(it.interest), ` score ${it.score.toFixed(3)}${because}`);
    return itemRow("li", it, extra);
  }));
  const notes = [`${r.interests} live interests`, `history of ${r.history.length} items`];
  if (r.ranked) notes.push("ranked by the ranker");
  if (r.user_id !== null && !r.known_user) notes.push(`unknown user ${r.user_id}: empty history`);
  if (r.ignored_items.length) notes.push(`ignored (not in the catalogue): ${r.ignored_items.slice(0, 10).join(", ")}`);
  $("summary").textContent = notes.join(" · ");
}

// ---- actions ----------------------------------------------------------------------------------

function who() {
  return state.user !== null ? { user_id: state.user } : { history: state.history };
}

function listSize() {
  const n = Math.round(Number($("n").value));
  return Number.isFinite(n) && n >= 1 ? Math.min(n, 100) : 10;
}

async function refresh(all) {
  const seq = ++state.seq;
  if (all) state.needInterests = true;
  setState("loading");
  const n = listSize();
  const body = { ...who(), n, lambda: Number($("lambda").value), rank: $("rank").checked };
  try {
    const [ints, rec] = await Promise.all([
      state.needInterests ? api("POST", "/interests", { ...who(), n }) : null,
      api("POST", "/recommend", body)]);
    if (seq !== state.seq) return; // a newer refresh is on its way
    if (ints) renderInterests(ints);
    state.needInterests = false;
    renderMerged(rec);
    $("controls").hidden = false;
    $("result").hidden = false;
    clearError();
    setState("ready");
  } catch (e) {
    if (seq !== state.seq) return;
    showError(e.message);
    setState("error");
  }
}

async function recordClick(it) {
  try {
    if (state.user !== null) {
      await api("POST", "/events", { user_id: state.user, events: [{ item_id: it.item_id }] });
    } else {
      state.history.push(it.item_id);
      $("history").value = state.history.join(" ");
    }
  } catch (e) {
    showError(e.message);
    setState("error");
    return;
  }
  await refresh(true);
  $("summary").textContent += ` · recorded ${it.title}`;
}

// The address names what is shown (?user=ID&lambda=0.5&n=20), so that a view can be shared.
function syncAddress() {
  const q = new URLSearchParams();
  if (state.user !== null) q.set("user", state.user);
  if (Number($("lambda").value) > 0) q.set("lambda", $("lambda").value);
  if (listSize() !== 10) q.set("n", String(listSize()));
  const qs = q.toString();
  history.replaceState(null, "", qs ? `?${qs}` : location.pathname);
}

function showUser(id) {
  state.user = id;
  $("user").value = id;
  syncAddress();
  refresh(true);
}

function showHistory() {
  const ids = $("history").value.split(/[\s,]+/).filter(Boolean);
  if (!ids.length) {
    showError("Paste at least one item id.");
    return;
  }
  state.user = null;
  state.history = ids;
  syncAddress();
  refresh(true);
}

function showLambda() {
  $("lambda-value").textContent = Number($("lambda").value).toFixed(2);
}

function debounce(fn, ms) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
}

const searchUsers = debounce(async (prefix) => {
  try {
    const r = await api("GET", `/users?prefix=${encodeURIComponent(prefix)}&limit=20`);
    $("user-list").replaceChildren(...r.users.map((u) => el("option", { value: u })));
  } catch (e) {
    showError(e.message);
  }
}, 200);

async function start() {
  window.addEventListener("error", (e) => showError(`page error: ${e.message}`));
  window.addEventListener("unhandledrejection", (e) => showError(`page error: ${e.reason}`));
  $("choose").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = $("user").value.trim();
    if (id) showUser(id);
    else showError("Enter a user id.");
  });
  $("show-history").addEventListener("click", showHistory);
  $("user").addEventListener("input", () => searchUsers($("user").value.trim()));
  const requery = debounce(() => refresh(false), 120);
  $("lambda").addEventListener("input", () => {
    showLambda();
    syncAddress();
    requery();
  });
  $("rank").addEventListener("change", () => refresh(false));
  $("n").addEventListener("change", () => {
    syncAddress();
    refresh(true);
  });
  try {
    const h = await api("GET", "/health");
    $("server").textContent = `${h.model} · ${h.items} items · ${h.index} index`
      + (h.ranker ? ` · ranker ${h.ranker}` : "");
    $("rank-label").hidden = !h.ranker;
  } catch (e) {
    showError(e.message);
    setState("error");
  }
  const q = new URLSearchParams(location.search);
  if (q.has("lambda")) $("lambda").value = q.get("lambda");
  if (q.has("n")) $("n").value = q.get("n");
  showLambda();
  if (q.get("user")) showUser(q.get("user"));
}

start();
