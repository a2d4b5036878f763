// Baton NOC wallboard: renders the daemon's snapshots (server-sent events from
// /v1/wallboard/events) in place, without reloading. No framework, no outside network: DOM nodes
// are built with textContent only (nothing the daemon sends is parsed as HTML), and updated in
// place keyed by office, run and device, so animations and layout do not jump every second.
"use strict";

(() => {
  const EVENTS_URL = "/v1/wallboard/events";
  const STALE_AFTER_S = 5;

  const VERDICT_GLYPH = { HEALTHY: "●", DEGRADED: "◐", DOWN: "✖", UNREACHABLE: "◌", UNKNOWN: "?" };
  const PHASE_GLYPH = {
    OPEN: "", SUSPECT: "⚠ ", CLOSED: "■ ", HANDING_OVER: "⇢ ", HANDED_OVER: "⇒ ", HANDING_BACK: "⇠ ", FAILED: "✖ ",
  };
  const OPERATED = new Set(["HANDING_OVER", "HANDED_OVER", "HANDING_BACK"]);
  const STATUS_TEXT = {
    running: "⟳ RUNNING", done: "✔ DONE", failed: "✖ FAILED", unknown: "? UNKNOWN",
    rolled_back: "↶ ROLLED BACK", skipped: "– SKIPPED", pending: "⏸ PENDING",
  };

  const $ = (id) => document.getElementById(id);
  let latest = null;       // the last snapshot
  let serverSkewS = 0;     // server time - browser time, so "for 3 min" uses the daemon's clock
  let lastEventAt = 0;     // browser time of the last event
  let signedOut = false;

  // --- small DOM helpers ----------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setText(node, text) {
    const value = text == null ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setData(node, name, value) {
    const text = value == null ? "" : String(value);
    if (node.dataset[name] !== text) node.dataset[name] = text;
  }

  // Keeps `parent`'s children in the order of `items`, one per key: reused, created or removed.
  function reconcile(parent, items, keyOf, create, update) {
    const existing = new Map();
    for (const child of Array.from(parent.children)) existing.set(child.dataset.key, child);
    let cursor = parent.firstElementChild;
    for (const item of items) {
      const key = String(keyOf(item));
      let node = existing.get(key);
      if (node) existing.delete(key);
      else {
        node = create(item);
        node.dataset.key = key;
      }
      update(node, item);
      if (node !== cursor) parent.insertBefore(node, cursor);
      else cursor = cursor.nextElementSibling;
    }
    for (const node of existing.values()) node.remove();
  }

  function phaseText(phase) { return (phase || "UNKNOWN").replace(/_/g, " "); }

  function nowS() { return Date.now() / 1000 + serverSkewS; }

  function ago(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${m % 60} min`;
    return `${Math.floor(h / 24)} d`;
  }

  function clockText(epochS) {
    return new Date(epochS * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function shortDevice(device, office) {
    return device.startsWith(`${office}-`) ? device.slice(office.length + 1) : device;
  }

  // --- the bar --------------------------------------------------------------------------------

  function renderBar(snap) {
    setText($("vantage"), snap.vantage ? `${snap.vantage}${snap.vantage_office ? ` @ ${snap.vantage_office}` : ""}` : "");
    const flags = [];
    if (snap.flags.storm) flags.push(["storm", "STORM GUARD"]);
    if (snap.flags.paused) flags.push(["paused", "PAUSED"]);
    if (snap.flags.shadow) flags.push(["shadow", "SHADOW MODE"]);
    if (snap.flags.leader === false) flags.push(["standby", "STANDBY: NOT LEADER"]);
    reconcile($("flags"), flags, (f) => f[0], () => el("span", "flag"), (node, f) => {
      setData(node, "flag", f[0]);
      setText(node, f[1]);
    });
    const counts = Object.entries(snap.phases || {}).filter(([, n]) => n > 0);
    reconcile($("summary"), counts, (c) => c[0], () => el("span", "count"), (node, [phase, n]) => {
      setData(node, "phase", phase);
      setText(node, `${n} ${phaseText(phase)}`);
    });
    const notOpen = counts.filter(([p]) => p !== "OPEN").map(([p, n]) => `${n} ${phaseText(p)}`);
    document.title = notOpen.length ? `Baton · ${notOpen.join(" · ")}` : "Baton · all OPEN";
  }

  // --- offices --------------------------------------------------------------------------------

  function createRegion() {
    const section = el("section", "region");
    const title = el("h2");
    title.append(el("span", "region-name"), el("span", "n"));
    section.append(title, el("div", "tiles"));
    return section;
  }

  function updateRegion(section, region) {
    setData(section, "region", region.id);
    setText(section.querySelector(".region-name"), region.id);
    setText(section.querySelector(".n"), `${region.offices.length}`);
    reconcile(section.querySelector(".tiles"), region.offices, (o) => o.id, createTile, updateTile);
  }

  function createTile() {
    const tile = el("article", "tile");
    const head = el("div", "tile-head");
    const names = el("div");
    names.append(el("h3", "name"), el("div", "office-id"));
    head.append(names, el("span", "verdict"));
    tile.append(head, el("div", "phase"), el("div", "alt"), el("div", "closure"), el("p", "reason"), el("div", "meta"));
    return tile;
  }

  function updateTile(tile, office) {
    setData(tile, "office", office.id);
    setData(tile, "phase", office.phase);
    setData(tile, "verdict", office.verdict);
    setText(tile.querySelector(".name"), office.name);
    setText(tile.querySelector(".office-id"), office.name !== office.id ? office.id : "");
    setText(tile.querySelector(".verdict"), `${VERDICT_GLYPH[office.verdict] || "?"} ${office.verdict}`);
    tile.querySelector(".verdict").title = office.verdict_detail || "";
    setText(tile.querySelector(".phase"), `${PHASE_GLYPH[office.phase] || ""}${phaseText(office.phase)}`);
    let alt = "";
    if (OPERATED.has(office.phase) && office.alternate) alt = `→ operated from ${office.alternate_name || office.alternate}`;
    else if (office.alternates_names && office.alternates_names.length) alt = `alternate: ${office.alternates_names[0]}`;
    else alt = "no alternate";
    setText(tile.querySelector(".alt"), alt);
    const closure = office.closure;
    let declared = "";
    if (closure && closure.kind === "declared") {
      declared = `declared closed by ${closure.who || "an operator"}: ${closure.reason || "no reason given"}`;
      if (closure.until) declared += ` (until ${clockText(closure.until)})`;
    }
    setText(tile.querySelector(".closure"), declared);
    setText(tile.querySelector(".reason"), office.reason || "");
    const badges = [];
    if (office.since) badges.push(["since", `for ${ago(nowS() - office.since)}`]);
    if (office.alerts) badges.push(["alerts", `⚑ ${office.alerts} alert${office.alerts > 1 ? "s" : ""}`]);
    if (office.pending_devices && office.pending_devices.length) {
      badges.push(["pending", `⏸ ${office.pending_devices.length} pending`]);
    }
    if (office.flapping) badges.push(["flapping", "↯ flapping"]);
    if (office.blocked_until && office.blocked_until > nowS()) {
      badges.push(["blocked", `anti-flap ${ago(office.blocked_until - nowS())}`]);
    }
    reconcile(tile.querySelector(".meta"), badges, (b) => b[0], () => el("span", "badge"), (node, [kind, text]) => {
      setData(node, "badge", kind);
      setText(node, text);
    });
  }

  function renderOffices(snap) {
    const root = $("offices");
    const waiting = root.querySelector(".waiting");
    if (waiting) waiting.remove();
    reconcile(root, snap.regions, (r) => r.id, createRegion, updateRegion);
  }

  // --- runs -----------------------------------------------------------------------------------

  function createRun() {
    const run = el("article", "run");
    const bar = el("div", "bar");
    bar.append(el("div", "fill"));
    run.append(el("h3"), el("div", "run-meta"), el("p", "run-reason"), bar, el("ul", "devices"));
    return run;
  }

  function updateRun(node, run) {
    setData(node, "run", run.id);
    setData(node, "runOffice", run.office);
    setData(node, "phase", run.kind === "handback" ? "HANDING_BACK" : "HANDING_OVER");
    const arrow = run.kind === "handback" ? "⇠" : "⇢";
    setText(node.querySelector("h3"), `${(run.kind || "run").toUpperCase()} ${run.office_name} ${arrow} ${run.alternate_name || "?"}`);
    const devices = run.devices || [];
    const finished = devices.filter((d) => ["done", "skipped", "failed", "rolled_back"].includes(d.status)).length;
    const meta = [];
    if (run.who) meta.push(`by ${run.who}`);
    if (run.started) meta.push(`${ago(nowS() - run.started)}`);
    meta.push(devices.length ? `${finished}/${devices.length} devices finished` : "starting");
    setText(node.querySelector(".run-meta"), meta.join(" · "));
    setText(node.querySelector(".run-reason"), run.reason || "");
    const fill = node.querySelector(".fill");
    const width = devices.length ? `${Math.round((100 * finished) / devices.length)}%` : "0%";
    if (fill.style.width !== width) fill.style.width = width;
    reconcile(node.querySelector(".devices"), devices, (d) => d.id, () => {
      const li = el("li");
      li.append(el("span", "dev"), el("span", "status"), el("span", "step"));
      return li;
    }, (li, device) => {
      const status = device.pending ? "pending" : device.status;
      setData(li, "device", device.id);
      setData(li, "status", status);
      setText(li.querySelector(".dev"), shortDevice(device.id, run.office));
      setText(li.querySelector(".status"), STATUS_TEXT[status] || String(status).toUpperCase());
      const step = [device.step, device.detail].filter(Boolean).join(": ");
      setText(li.querySelector(".step"), step);
    });
  }

  function renderRuns(snap) {
    const panel = $("runs");
    panel.classList.toggle("has-items", snap.runs.length > 0);
    reconcile($("run-list"), snap.runs, (r) => r.id, createRun, updateRun);
  }

  // --- alerts, approvals, vantages, recent runs -------------------------------------------------

  function renderAlerts(snap) {
    $("alerts").classList.toggle("has-items", snap.alerts.length > 0);
    reconcile($("alert-list"), snap.alerts, (a) => `${a.alert}/${a.office || ""}`, () => {
      const li = el("li");
      li.append(el("span", "alert-office"), " ", el("span", "alert-name"), " ", el("span", "alert-message"), " ",
        el("span", "ago"));
      return li;
    }, (li, alert) => {
      setData(li, "alert", alert.alert);
      setData(li, "alertOffice", alert.office || "");
      setText(li.querySelector(".alert-office"), alert.office_name || "");
      setText(li.querySelector(".alert-name"), alert.alert);
      setText(li.querySelector(".alert-message"), alert.message || "");
      setText(li.querySelector(".ago"), alert.at ? `${ago(nowS() - alert.at)} ago` : "");
    });
  }

  // Approvals and vantages come later: their panels stay hidden while the daemon sends none.
  function renderOptional(panelId, listId, items, text) {
    const panel = $(panelId);
    const show = Array.isArray(items) && items.length > 0;
    if (panel.hidden === show) panel.hidden = !show;
    reconcile($(listId), show ? items : [], (item) => (item && (item.id || item.office)) || JSON.stringify(item),
      () => el("li"), (li, item) => setText(li, text(item)));
  }

  function approvalText(item) {
    if (!item || typeof item !== "object") return String(item);
    const what = [item.kind, item.office, item.alternate ? `→ ${item.alternate}` : ""].filter(Boolean).join(" ");
    return [what, item.reason || item.message || ""].filter(Boolean).join(": ");
  }

  function vantageText(item) {
    if (!item || typeof item !== "object") return String(item);
    const parts = [
      item.id || item.vantage,
      item.office ? `@ ${item.office}` : "",
      item.leader ? `LEADER${item.epoch ? ` (epoch ${item.epoch})` : ""}` : "",
      item.here ? "(this wallboard)" : "",
    ];
    if (item.last_seen) parts.push(`seen ${ago(nowS() - item.last_seen)} ago`);
    return parts.filter(Boolean).join(" ");
  }

  function renderRecent(snap) {
    const runs = snap.recent_runs || [];
    $("recent").classList.toggle("has-items", runs.length > 0);
    reconcile($("recent-list"), runs, (r) => r.id, () => {
      const li = el("li");
      li.append(el("span", "what"), " ", el("span", "result"), " ", el("span", "ago"));
      return li;
    }, (li, run) => {
      setData(li, "recentRun", run.id);
      setText(li.querySelector(".what"), `${run.kind} ${run.office_name} → ${run.alternate_name}`);
      const result = li.querySelector(".result");
      setText(result, (run.result || run.status || "").toUpperCase());
      result.className = `result result-${run.result === "ok" ? "ok" : "failed"}`;
      setText(li.querySelector(".ago"), run.finished ? `${ago(nowS() - run.finished)} ago` : "");
    });
  }

  // --- wiring ---------------------------------------------------------------------------------

  function render(snap) {
    latest = snap;
    renderBar(snap);
    renderOffices(snap);
    renderRuns(snap);
    renderAlerts(snap);
    renderOptional("approvals", "approval-list", snap.approvals, approvalText);
    renderOptional("vantages", "vantage-list", snap.vantages, vantageText);
    renderRecent(snap);
  }

  function heard(now) {
    if (typeof now === "number") serverSkewS = now - Date.now() / 1000;
    lastEventAt = Date.now() / 1000;
    showConnection();
  }

  function showConnection() {
    const node = $("connection");
    let state = "connecting";
    let text = "CONNECTING";
    if (signedOut) {
      state = "signed-out";
      text = "SIGNED OUT";
    } else if (lastEventAt) {
      const silent = Date.now() / 1000 - lastEventAt;
      if (silent > STALE_AFTER_S) {
        state = "stale";
        text = `STALE ${ago(silent)}`;
      } else {
        state = "live";
        text = "LIVE";
      }
    }
    setData(node, "state", state);
    setText(node, text);
  }

  function signOut(why) {
    signedOut = true;
    setText($("signed-out-why"), why);
    $("signed-out").hidden = false;
    showConnection();
  }

  function connect() {
    const source = new EventSource(EVENTS_URL);
    source.addEventListener("hello", (event) => {
      const hello = JSON.parse(event.data);
      const until = hello.expires ? ` until ${clockText(hello.expires)}` : "";
      setText($("who"), `signed in as ${hello.who}${until}`);
    });
    source.addEventListener("snapshot", (event) => {
      const snap = JSON.parse(event.data);
      heard(snap.now);
      render(snap);
    });
    source.addEventListener("ping", (event) => {
      heard(JSON.parse(event.data).now);
    });
    source.addEventListener("expired", () => {
      source.close();
      signOut("This wallboard's session ended (it expired, or it was signed out).");
    });
    source.addEventListener("error", () => {
      // CLOSED: the daemon refused the stream (401: the session is gone, e.g. after a restart).
      // CONNECTING: the connection dropped; EventSource retries on its own, the bar says STALE.
      if (source.readyState === EventSource.CLOSED && !signedOut) {
        signOut("The daemon no longer accepts this wallboard's session (it expired, or the daemon restarted).");
      }
      showConnection();
    });
  }

  function tick() {
    setText($("clock"), new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }));
    showConnection();
    if (latest) render(latest); // relative times ("for 3 min") move on between snapshots
  }

  document.addEventListener("DOMContentLoaded", () => {
    tick();
    setInterval(tick, 1000);
    connect();
  });
})();
