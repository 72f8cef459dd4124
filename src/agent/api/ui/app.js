// servant dashboard. One page, one event stream (/v1/stream?view=...), fed by the agent's shared
// watches: nothing here polls. Every value from the cluster goes in with textContent, never as HTML.
"use strict";

const $ = (sel) => document.querySelector(sel);

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat()) {
    if (k === undefined || k === null || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}

// States in colour and in words.
const TONE = {
  passing: "ok", succeeded: "ok", healthy: "ok", running: "info", started: "info", queued: "idle",
  warning: "warn", unhealthy: "warn", timed_out: "warn", unplaced: "warn", stopped: "idle",
  critical: "bad", failed: "bad", lost: "bad", rejected: "bad", refused: "bad", unavailable: "bad", maintenance: "warn",
  yes: "ok", no: "idle", unknown: "idle",
};
function badge(word) {
  const w = String(word || "unknown");
  return h("span", { class: "badge s-" + (TONE[w] || "idle"), "data-state": w }, w.replace("_", " "));
}

// Times: relative, and absolute in local time; refreshed every second without asking the agent.
function parseTime(t) {
  if (t === undefined || t === null || t === "") return null;
  if (typeof t === "number") return new Date(t);
  const d = new Date(t);
  return isNaN(d) ? null : d;
}
function rel(d) {
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  const a = Math.abs(s);
  const unit = a < 60 ? [a, "s"] : a < 3600 ? [Math.floor(a / 60), "min"] : a < 86400 ? [Math.floor(a / 3600), "h"] : [Math.floor(a / 86400), "d"];
  return s >= 0 ? `${unit[0]} ${unit[1]} ago` : `in ${unit[0]} ${unit[1]}`;
}
function timeCell(t) {
  const d = parseTime(t);
  if (!d) return h("span", { class: "muted" }, "–");
  const abs = d.toLocaleString(undefined, { hour12: false });
  return h("span", { class: "time", "data-t": d.getTime(), title: d.toISOString() },
    h("span", { class: "rel" }, rel(d)), " ", h("span", { class: "muted abs" }, "(" + abs + ")"));
}
setInterval(() => {
  for (const el of document.querySelectorAll(".time")) {
    el.querySelector(".rel").textContent = rel(new Date(Number(el.dataset.t)));
  }
}, 1000);

const bytes = (n) => {
  if (n === undefined || n === null) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0; let v = Number(n);
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return (i ? v.toFixed(1) : v) + " " + u[i];
};
const pct = (x) => (x === undefined || x === null ? "–" : (Number(x)).toFixed(1) + " %");

function table(cols, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty || "Nothing here.");
  return h("div", { class: "scroll" }, h("table", {},
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", { class: c.num ? "num" : "" }, c.t)))),
    h("tbody", {}, rows.map((r) => h("tr", r.attrs || {}, r.cells.map((c, i) =>
      h("td", { class: cols[i].num ? "num" : cols[i].wrap ? "wrap" : "" }, c)))))));
}

// ---- writes: the user's Consul token, JSON only, a header a cross-site form cannot send ----
const token = () => sessionStorage.getItem("servant-token") || "";
async function write(method, path, body) {
  const headers = { "Content-Type": "application/json", "X-Servant-Request": "1" };
  if (token()) headers["X-Consul-Token"] = token();
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "omit" });
  let doc = null;
  try { doc = await r.json(); } catch (_) { doc = null; }
  if (!r.ok) throw new Error((doc && doc.error) || `${r.status} ${r.statusText}`);
  return doc;
}
function message(where, ok, text) {
  where.replaceChildren(h("div", { class: "msg " + (ok ? "ok" : "bad"), role: "status" }, text));
}

// ---- pages ----
const params = new URLSearchParams(location.search);
const page = (location.pathname.replace(/^\/ui\/?/, "").split("/")[0]) || "overview";

function overview(d) {
  const nodes = d.Nodes || [];
  const down = nodes.filter((n) => n.SerfHealth !== "passing").length;
  const cards = [
    ["nodes", nodes.length], ["unhealthy nodes", down],
    ...Object.entries(d.JobCounts || {}).map(([k, v]) => ["jobs " + k.replace("_", " "), v]),
    ...Object.entries(d.AppCounts || {}).map(([k, v]) => ["apps " + k, v]),
  ];
  return [
    h("h1", {}, "Overview"),
    h("div", { class: "cards" }, cards.map(([l, n]) => h("div", { class: "card", "data-card": l }, h("div", { class: "n" }, n), h("div", { class: "l" }, l)))),
    h("h2", {}, "Nodes"),
    table([{ t: "node" }, { t: "health" }, { t: "servant" }, { t: "address" }, { t: "CPUs", num: true }, { t: "load 1m", num: true }, { t: "memory used" }, { t: "containers", num: true }],
      nodes.map((n) => {
        const r = n.Resource;
        const used = r ? r.mem_total_bytes - r.mem_free_bytes : null;
        const frac = r && r.mem_total_bytes ? used / r.mem_total_bytes : 0;
        return {
          attrs: { "data-node": n.Node },
          cells: [n.Node, badge(n.SerfHealth || "unknown"), badge(n.Servant ? "yes" : "no"), n.Address,
            r ? r.cpu_processors : "–", r ? r.load_average["1min"].toFixed(2) : "–",
            r ? h("span", {}, h("span", { class: "bar" }, h("i", { style: `width:${Math.round(frac * 100)}%` })), `${bytes(used)} of ${bytes(r.mem_total_bytes)}`) : (n.ResourceError || "–"),
            r && r.containers ? r.containers.length : "–"],
        };
      }), "No nodes."),
    h("h2", {}, "Failing checks"),
    table([{ t: "node" }, { t: "check" }, { t: "service" }, { t: "state" }, { t: "output", wrap: true }],
      (d.FailingChecks || []).map((c) => ({ cells: [c.Node, c.Name || c.CheckID, c.ServiceName || "–", badge(c.Status), c.Output] })),
      "Every check passes."),
  ];
}

function jobs(d) {
  const form = h("form", { class: "inline", id: "submit-form" },
    h("label", {}, "command", h("input", { name: "command", class: "wide", required: true, placeholder: "uptime" })),
    h("label", {}, "node", h("input", { name: "node", placeholder: "any node" })),
    h("label", {}, "every node", h("input", { name: "all", type: "checkbox" })),
    h("label", {}, "timeout (s)", h("input", { name: "timeout", type: "number", min: 1, placeholder: "default" })),
    h("button", { class: "primary", type: "submit" }, "Run"));
  const out = h("div", { id: "submit-msg" });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = { Command: f.get("command") };
    if (f.get("node")) body.Node = f.get("node");
    if (f.get("all")) body.All = true;
    if (f.get("timeout")) body.Timeout = Number(f.get("timeout"));
    try {
      const r = await write("POST", "/v1/jobs", body);
      out.replaceChildren(h("div", { class: "msg ok", role: "status" }, "queued ",
        ...r.Keys.map((k) => h("a", { href: "/ui/job?key=" + encodeURIComponent(k), "data-queued": k }, k + " "))));
    } catch (e) { message(out, false, "not queued: " + e.message); }
  });
  const state = params.get("state") || "";
  const offset = Number(params.get("offset") || 0);
  const limit = Number(params.get("limit") || 50);
  const go = (o) => { const p = new URLSearchParams(params); p.set("offset", Math.max(0, o)); location.search = p; };
  const filters = h("form", { class: "filters", method: "get" },
    h("label", {}, "state ", h("select", { name: "state" }, ["", "queued", "running", "succeeded", "failed", "timed_out", "rejected", "lost", "started"].map((s) => h("option", { value: s, selected: s === state }, s || "any")))),
    h("label", {}, "node ", h("input", { name: "node", value: params.get("node") || "" })),
    h("button", { type: "submit" }, "Filter"));
  const rows = (d.Jobs || []).map((j) => ({
    attrs: { "data-key": j.Key, "data-state": j.State },
    cells: [h("a", { href: "/ui/job?key=" + encodeURIComponent(j.Key) }, j.Key), badge(j.State), j.Node || "–", j.Attempt,
      j.ExitCode === undefined ? "–" : j.ExitCode, timeCell(j.Time)],
  }));
  const shown = (d.Jobs || []).length;
  return [
    h("h1", {}, "Jobs"), h("div", { class: "writer", id: "submit-box" }, form, out), filters,
    h("div", { class: "pager" },
      h("button", { type: "button", disabled: offset <= 0, onclick: () => go(offset - limit) }, "‹ newer"),
      h("span", { class: "muted" }, shown ? `${d.Offset + 1}–${d.Offset + shown} of ${d.Total}` : `0 of ${d.Total}`),
      h("button", { type: "button", disabled: !d.LeftOff, onclick: () => go(offset + limit) }, "older ›")),
    table([{ t: "job" }, { t: "state" }, { t: "node" }, { t: "attempt", num: true }, { t: "exit", num: true }, { t: "time" }], rows, "No jobs match."),
  ];
}

function job(d) {
  const key = params.get("key") || "";
  if (!d.Job) return [h("h1", {}, key), h("p", { class: "muted", id: "job-missing" }, d.Error || "No such job.")];
  const j = d.Job;
  const res = j.Result || null;
  const state = res ? (res.Status || "unknown") : j.State;
  const facts = [["state", badge(state)], ["node", (res && res.ExecutionNode) || j.Node || "–"],
    ["attempt", (res && res.Attempt) || j.Attempt || j.Attempts || "–"]];
  if (res) {
    facts.push(["command", h("code", {}, res.Command)], ["exit code", res.ExitCode], ["started", timeCell(res.StartTimeStr)], ["ended", timeCell(res.EndTimeStr)]);
    if (res.ExitErrors) facts.push(["why", res.ExitErrors]);
    if (res.Image) facts.push(["image", res.Image]);
  } else if (j.Since) facts.push(["since", timeCell(j.Since)]);
  const stdout = res ? res.Output : d.Live && d.Live.Stdout;
  const stderr = res ? res.OutputErrors : d.Live && d.Live.Stderr;
  const cut = res ? (res.OutputTruncated || res.OutputErrorsTruncated) : d.Live && d.Live.Truncated;
  let stop = "";
  if (state === "running" || state === "queued" || state === "started") {
    const out = h("div", {});
    const button = h("button", { class: "danger", type: "button", id: "stop-job" }, state === "queued" ? "Remove from queue" : "Stop job");
    button.addEventListener("click", async () => {
      try { await write("DELETE", "/v1/jobs/" + key); message(out, true, "stop requested: its node stops it and writes its result"); } catch (e) { message(out, false, "not stopped: " + e.message); }
    });
    stop = h("div", { class: "writer", id: "stop-box" }, h("p", {}, button), out);
  }
  return [
    h("h1", {}, "Job ", h("code", {}, key)),
    h("dl", { class: "kv" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    stop,
    h("h2", {}, "Output", state === "running" ? h("span", { class: "muted" }, " (following)") : ""),
    h("pre", { id: "stdout" }, stdout || ""),
    stderr ? [h("h2", {}, "Errors"), h("pre", { class: "err", id: "stderr" }, stderr)] : [],
    cut ? h("p", { class: "muted" }, "Output was cut; the whole log: ", h("code", {}, "servant logs " + key.replace(/^jobs\//, ""))) : "",
    d.Live && d.Live.Error ? h("p", { class: "muted" }, d.Live.Error) : "",
  ];
}

const APP_STATE = ["stopped", "enabled", "unavailable"];
function apps(d) {
  const hosts = Object.keys(d.Topology || {}).sort();
  const tasks = Object.keys(d.Tasks || {}).sort();
  const states = d.States || {};
  const cell = (host, task) => {
    const a = (states[host] || {})[task];
    const placed = (d.Topology[host] || []).includes(task);
    if (!placed && !a) return h("span", { class: "muted" }, "·");
    if (!a) return badge("queued");
    const word = a.status === 2 ? "unavailable" : a.status === 0 ? "stopped" : a.health === 0 ? "healthy" : "unhealthy";
    return h("span", {}, badge(word), a.pid ? h("span", { class: "muted" }, " pid " + a.pid) : "");
  };
  const form = h("form", { class: "inline", id: "task-form" },
    h("label", {}, "task name", h("input", { name: "name", required: true })),
    h("label", { style: "flex:1 1 100%" }, "task JSON (App Manager's shape)", h("textarea", { name: "body", required: true, placeholder: '{"content":{"name":"web","command":"python3 -m http.server 8080"},"replication":2}' })),
    h("button", { class: "primary", type: "submit" }, "Put task"),
    h("button", { class: "danger", type: "button", id: "task-rm" }, "Remove task"));
  const out = h("div", {});
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    let body;
    try { body = JSON.parse(f.get("body")); } catch (e) { return message(out, false, "not JSON: " + e.message); }
    try { await write("PUT", "/v1/tasks/" + encodeURIComponent(f.get("name")), body); message(out, true, "task " + f.get("name") + " written"); } catch (e) { message(out, false, e.message); }
  });
  form.querySelector("#task-rm").addEventListener("click", async () => {
    const name = new FormData(form).get("name");
    if (!name) return message(out, false, "name the task to remove");
    try { await write("DELETE", "/v1/tasks/" + encodeURIComponent(name)); message(out, true, "task " + name + " removed"); } catch (e) { message(out, false, e.message); }
  });
  const unplaced = (d.Schedule && d.Schedule.unplaced) || [];
  return [
    h("h1", {}, "Apps"),
    d.Schedule ? h("p", { class: "muted" }, "leader: " + d.Schedule.leader) : h("p", { class: "muted" }, "No apps leader has reported yet."),
    h("h2", {}, "Topology (hosts × apps)"),
    table([{ t: "host" }, ...tasks.map((t) => ({ t }))], hosts.map((host) => ({ attrs: { "data-host": host }, cells: [host, ...tasks.map((t) => cell(host, t))] })), "Nothing placed."),
    h("h2", {}, "Tasks"),
    table([{ t: "task" }, { t: "replicas", num: true }, { t: "placed", num: true }, { t: "cpu", num: true }, { t: "memory MB", num: true }, { t: "labels", wrap: true }],
      tasks.map((t) => {
        const x = d.Tasks[t];
        return { cells: [t, x.Replication, hosts.filter((hh) => d.Topology[hh].includes(t)).length, x.Cpu, x.MemoryMB, Object.entries(x.Labels || {}).map(([k, v]) => k + "=" + v).join(", ")] };
      }), "No tasks."),
    h("h2", {}, "Unplaced replicas"),
    table([{ t: "task" }, { t: "wanted", num: true }, { t: "placed", num: true }, { t: "why", wrap: true }], unplaced.map((u) => ({ cells: [u.task, u.wanted, u.placed, u.reason] })), "Every replica is placed."),
    Object.keys(d.InvalidTasks || {}).length ? [h("h2", {}, "Invalid tasks"), table([{ t: "task" }, { t: "why", wrap: true }], Object.entries(d.InvalidTasks).map(([k, v]) => ({ cells: [k, v] })))] : [],
    h("h2", {}, "Change"), h("div", { class: "writer", id: "task-box" }, form, out),
  ];
}

function services(d) {
  const rows = [];
  for (const s of d.Services || []) {
    if (!s.Instances.length) rows.push({ cells: [s.Name, "–", "–", "–", badge("unknown"), (s.Tags || []).join(", ")] });
    for (const i of s.Instances) {
      rows.push({ attrs: { "data-service": s.Name }, cells: [s.Name, i.Node, i.ID, i.Address + (i.Port ? ":" + i.Port : ""), badge(i.Status), Object.entries(i.Checks).map(([k, v]) => k + ": " + v).join(", ")] });
    }
  }
  return [h("h1", {}, "Services"), table([{ t: "service" }, { t: "node" }, { t: "id" }, { t: "address" }, { t: "health" }, { t: "checks / tags", wrap: true }], rows, "No services.")];
}

function triggers(d) {
  return [h("h1", {}, "Trigger runs"),
    table([{ t: "time" }, { t: "node" }, { t: "service" }, { t: "role" }, { t: "state" }, { t: "outcome" }, { t: "output", wrap: true }],
      (d.Runs || []).map((r) => {
        const x = r.Run;
        const outcome = x.refused ? "refused" : x.timed_out ? "timed_out" : x.exit_code === 0 ? "succeeded" : "failed";
        return { cells: [timeCell(x.time_ms), r.Node, x.service, x.role, badge(x.state), h("span", {}, badge(outcome), " ", h("span", { class: "muted" }, `${x.duration_ms} ms`)),
          x.output ? h("details", {}, h("summary", {}, x.key), h("pre", {}, x.output)) : h("code", {}, x.key)] };
      }), "No trigger has run.")];
}

function containers(d) {
  return [h("h1", {}, "Containers on " + d.Node),
    d.Docker ? "" : h("p", { class: "muted" }, "No Docker Engine answers on this node."),
    table([{ t: "name" }, { t: "image" }, { t: "job / app" }, { t: "CPU", num: true }, { t: "memory", num: true }, { t: "limit", num: true }],
      (d.Containers || []).map((c) => ({ cells: [c.name, c.image, c.job || c.app || "–", pct(c.cpu_percent), bytes(c.memory_bytes), c.memory_limit_bytes ? bytes(c.memory_limit_bytes) : "none"] })),
      "No containers run here.")];
}

const PAGES = { overview, jobs, job, apps, services, triggers, containers };

function start() {
  for (const a of document.querySelectorAll("nav a")) if (a.dataset.page === page || (page === "job" && a.dataset.page === "jobs")) a.classList.add("here");
  const box = $("#token-box");
  $("#token-button").addEventListener("click", () => { box.hidden = !box.hidden; });
  $("#token-form").addEventListener("submit", (e) => { e.preventDefault(); sessionStorage.setItem("servant-token", $("#token-input").value); box.hidden = true; });
  $("#token-clear").addEventListener("click", () => { sessionStorage.removeItem("servant-token"); $("#token-input").value = ""; });
  const render = PAGES[page];
  if (!render) { $("#main").replaceChildren(h("h1", {}, "No such page"), h("p", {}, h("a", { href: "/ui/" }, "Overview"))); return; }
  const q = new URLSearchParams(params);
  q.set("view", page);
  if (page === "jobs" && !q.get("limit")) q.set("limit", "50");
  const es = new EventSource("/v1/stream?" + q);
  const conn = $("#conn");
  es.onopen = () => { conn.textContent = "live"; conn.className = "conn live"; };
  es.onerror = () => { conn.textContent = "reconnecting"; conn.className = "conn down"; };
  es.addEventListener(page, (ev) => {
    const d = JSON.parse(ev.data);
    const main = $("#main");
    // Keep a write form (what the user is typing, the last answer) across updates.
    const keep = main.querySelector(".writer");
    const parts = d.Error && page !== "job" ? [h("div", { class: "msg bad" }, d.Error)] : render(d);
    const kept = keep ? keep.id : null;
    main.replaceChildren(...parts.flat());
    if (kept) { const fresh = main.querySelector("#" + kept); if (fresh) { fresh.replaceWith(keep); } }
    document.body.dataset.updated = String(Date.now());
    $("#foot").textContent = "updated " + new Date().toLocaleTimeString(undefined, { hour12: false }) + (d.Agent ? " · served by " + d.Agent : "");
  });
  window.servantStream = es;
}
start();
