// The dashboard served at GET /ui on the admin port: one plain HTML page with inline CSS and JS
// (no build step, no CDN; tsc carries it to dist/ as a string). It loads the current state over
// the admin API (/v1/transactions, /v1/branches, /v1/routes/probability) and then follows
// /v1/events (server-sent events). Everything it shows is written with textContent. With an admin
// token the page is opened as /ui?access_token=TOKEN: it sends the token as a Bearer header on
// its API calls and as ?access_token= on the EventSource URL (EventSource cannot set headers).
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>txmesh dashboard</title>
<style>
  :root { color-scheme: light dark; --ok: #137333; --bad: #b3261e; --muted: #5f6368; --line: #c4c7c5; }
  body { font: 14px/1.4 system-ui, sans-serif; margin: 0; }
  header, main, footer { padding: 0.75rem 1.25rem; }
  header { border-bottom: 1px solid var(--line); display: flex; gap: 1rem; align-items: baseline; flex-wrap: wrap; }
  h1 { font-size: 1.25rem; margin: 0; }
  h2 { font-size: 1.05rem; margin: 1.25rem 0 0.5rem; }
  table { border-collapse: collapse; width: 100%; }
  caption { text-align: left; font-weight: 600; padding: 0.25rem 0; }
  th, td { border-bottom: 1px solid var(--line); padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
  th { font-weight: 600; }
  code { font: 12px ui-monospace, monospace; }
  .committed { color: var(--ok); font-weight: 600; }
  .heuristic-mixed { color: var(--bad); font-weight: 600; }
  .aborted, .refused { color: var(--bad); font-weight: 600; }
  .muted { color: var(--muted); }
  button { font: inherit; padding: 0.2rem 0.6rem; margin-right: 0.25rem; cursor: pointer; }
  button:focus-visible, a:focus-visible { outline: 3px solid #1a73e8; outline-offset: 2px; }
  #status { min-height: 1.4em; }
  #live[data-state="open"] { color: var(--ok); }
  #live[data-state="closed"] { color: var(--bad); }
  ul.parts { margin: 0; padding-left: 1rem; }
  .skip { position: absolute; left: -999px; }
  .skip:focus { left: 0.5rem; top: 0.5rem; background: Canvas; padding: 0.25rem; }
</style>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header role="banner">
  <h1>txmesh dashboard</h1>
  <span>Live feed: <span id="live" data-state="connecting">connecting</span></span>
  <span class="muted" id="origin"></span>
</header>
<main id="main" role="main">
  <div id="status" role="status" aria-live="polite" aria-atomic="true"></div>

  <section aria-labelledby="h-tx">
    <h2 id="h-tx">Transactions</h2>
    <table id="tx-table">
      <caption>Transactions coordinated by this sidecar (live)</caption>
      <thead><tr>
        <th scope="col">Transaction</th><th scope="col">Status</th><th scope="col">Participants (vote, acknowledged)</th>
        <th scope="col">Prepare</th><th scope="col">Phase 2</th><th scope="col">Outcome</th>
      </tr></thead>
      <tbody id="tx-body"></tbody>
    </table>
    <p id="tx-empty" class="muted">No transactions yet.</p>
  </section>

  <section aria-labelledby="h-stuck">
    <h2 id="h-stuck">Stuck steps</h2>
    <table id="stuck-table">
      <caption>Saga compensations and TCC confirms/cancels that failed past their retry budget; fix the cause, then retry</caption>
      <thead><tr>
        <th scope="col">Transaction</th><th scope="col">Step</th><th scope="col">Service</th>
        <th scope="col">Attempts</th><th scope="col">Last error</th><th scope="col">Action</th>
      </tr></thead>
      <tbody id="stuck-body"></tbody>
    </table>
    <p id="stuck-empty" class="muted">No stuck steps.</p>
  </section>

  <section aria-labelledby="h-br">
    <h2 id="h-br">Branches held here</h2>
    <table id="branch-table">
      <caption>Branches of this sidecar's app; prepared ones may be resolved by an operator</caption>
      <thead><tr>
        <th scope="col">Transaction</th><th scope="col">Branch</th><th scope="col">Status</th>
        <th scope="col">Coordinator</th><th scope="col">Age</th><th scope="col">Action</th>
      </tr></thead>
      <tbody id="branch-body"></tbody>
    </table>
    <p id="branch-empty" class="muted">No branches.</p>
    <h3>Resolutions</h3>
    <ul id="resolutions" aria-label="Resolutions made from this page"></ul>
  </section>

  <section aria-labelledby="h-p">
    <h2 id="h-p">P(commit) per route</h2>
    <table id="route-table">
      <caption>Estimated probability that a transaction of the route commits (product of its participants' recent prepare success rates)</caption>
      <thead><tr><th scope="col">Route</th><th scope="col">P(commit)</th></tr></thead>
      <tbody id="route-body"></tbody>
    </table>
    <p id="route-empty" class="muted">No finished transactions yet.</p>
  </section>
</main>
<footer role="contentinfo" class="muted">Admin API: <code>/v1/transactions</code>, <code>/v1/branches</code>, <code>/v1/events</code>, <code>/metrics</code></footer>
<script>
"use strict";
(function () {
  var txs = new Map();
  var order = [];
  var MAX_TX = 200;
  var $ = function (id) { return document.getElementById(id); };
  $("origin").textContent = location.host;
  var token = new URLSearchParams(location.search).get("access_token") || "";
  function authed(headers) {
    if (token) headers.authorization = "Bearer " + token;
    return headers;
  }

  function announce(text) { $("status").textContent = text; }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  var traceUrl = null;
  function ms(v) { return typeof v === "number" ? v.toFixed(1) + " ms" : "\\u2014"; }

  function tx(id) {
    var t = txs.get(id);
    if (!t) {
      t = { id: id, status: "active", participants: new Map(), outcome: undefined, reason: undefined, prepareMs: undefined, phase2Ms: undefined };
      txs.set(id, t);
      order.unshift(id);
      while (order.length > MAX_TX) txs.delete(order.pop());
    }
    return t;
  }
  function part(t, p) {
    var x = t.participants.get(p.branch);
    if (!x) { x = { service: p.service, branch: p.branch, vote: undefined, acknowledged: false }; t.participants.set(p.branch, x); }
    return x;
  }

  function renderTx() {
    var body = $("tx-body");
    body.replaceChildren();
    order.forEach(function (id) {
      var t = txs.get(id);
      var tr = el("tr");
      tr.id = "tx-" + id;
      tr.dataset.tx = id;
      var th = el("th"); th.scope = "row"; th.appendChild(el("code", id));
      if (traceUrl && t.traceId) {
        var a = el("a", "trace");
        a.href = traceUrl.replace("{traceId}", encodeURIComponent(t.traceId));
        a.rel = "noopener"; a.target = "_blank";
        a.setAttribute("aria-label", "Trace of transaction " + id);
        th.appendChild(document.createTextNode(" ")); th.appendChild(a);
      }
      tr.appendChild(th);
      tr.appendChild(el("td", t.status + (t.takenFrom ? " (taken over from " + t.takenFrom + ")" : ""), t.status));
      var td = el("td");
      var ul = el("ul", null, "parts");
      t.participants.forEach(function (p) {
        ul.appendChild(el("li", p.service + ": " + (p.vote || "no vote yet") + (p.acknowledged ? ", acknowledged" : "") + (p.heuristic ? ", HEURISTIC: finished " + p.heuristic + " against the decision" : ""), p.heuristic ? "heuristic-mixed" : null));
      });
      td.appendChild(ul);
      tr.appendChild(td);
      tr.appendChild(el("td", ms(t.prepareMs)));
      tr.appendChild(el("td", ms(t.phase2Ms)));
      tr.appendChild(el("td", t.outcome ? t.outcome + (t.reason ? " (" + t.reason + ")" : "") : "\\u2014", t.outcome || ""));
      body.appendChild(tr);
    });
    $("tx-empty").hidden = order.length > 0;
  }

  function renderBranches(list) {
    var body = $("branch-body");
    body.replaceChildren();
    list.forEach(function (b) {
      var tr = el("tr");
      tr.dataset.tx = b.tx;
      var th = el("th"); th.scope = "row"; th.appendChild(el("code", b.tx)); tr.appendChild(th);
      tr.appendChild(el("td", b.branch));
      tr.appendChild(el("td", b.status + (b.inDoubt ? " (in doubt)" : ""), b.status));
      tr.appendChild(el("td", b.coordinator));
      tr.appendChild(el("td", Math.round(b.ageMs / 1000) + " s"));
      var act = el("td");
      if (b.status === "prepared") {
        [["committed", "Commit"], ["aborted", "Abort"]].forEach(function (o) {
          var btn = el("button", o[1]);
          btn.type = "button";
          btn.setAttribute("aria-label", o[1] + " branch " + b.branch + " of transaction " + b.tx);
          btn.addEventListener("click", function () { resolve(b, o[0], o[1], btn); });
          act.appendChild(btn);
        });
      } else {
        act.appendChild(el("span", "\\u2014", "muted"));
      }
      tr.appendChild(act);
      body.appendChild(tr);
    });
    $("branch-empty").hidden = list.length > 0;
  }

  function renderRoutes(map) {
    var body = $("route-body");
    body.replaceChildren();
    var keys = Object.keys(map).sort();
    keys.forEach(function (r) {
      var tr = el("tr");
      var th = el("th", r); th.scope = "row"; tr.appendChild(th);
      tr.appendChild(el("td", (map[r] * 100).toFixed(1) + " %"));
      body.appendChild(tr);
    });
    $("route-empty").hidden = keys.length > 0;
  }

  function getJson(path) {
    return fetch(path, { headers: authed({ accept: "application/json" }) }).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, status: r.status, body: body }; });
    });
  }
  var branchTimer;
  function loadBranches() {
    clearTimeout(branchTimer);
    return getJson("/v1/branches").then(function (r) {
      if (r.ok) renderBranches(r.body.branches || []);
    }, function () {});
  }
  function loadRoutes() {
    return getJson("/v1/routes/probability").then(function (r) { if (r.ok) renderRoutes(r.body); }, function () {});
  }
  function loadTransactions() {
    return getJson("/v1/transactions").then(function (r) {
      if (!r.ok) { announce("Transactions unavailable: " + ((r.body && r.body.error && r.body.error.message) || r.status)); return; }
      (r.body.transactions || []).slice().reverse().forEach(function (v) {
        var t = tx(v.id);
        t.status = v.status;
        if (v.takenFrom) t.takenFrom = v.takenFrom;
        if (v.traceId) t.traceId = v.traceId;
        t.reason = v.reason;
        if (v.status === "committed" || v.status === "aborted") t.outcome = v.status;
        (v.participants || []).forEach(function (p) {
          var x = part(t, p);
          x.vote = p.vote;
          x.acknowledged = p.acknowledged;
          x.heuristic = p.heuristic;
        });
        // saga/tcc: the steps, each with its status (recorded, finished, stuck...).
        (v.steps || []).forEach(function (st) {
          var x = part(t, { service: st.service, branch: st.id });
          x.vote = "step " + stepLabel(v, st);
        });
      });
      renderTx();
      renderStuck(r.body.transactions || []);
    }, function () {});
  }

  /** A finished step says what was done to it: compensated, confirmed or cancelled. */
  function stepLabel(v, st) {
    if (st.status !== "finished") return st.status;
    var aborted = v.status === "aborted" || v.status === "aborting";
    if (v.mode === "saga") return aborted ? "compensated" : "done";
    return aborted ? "cancelled" : "confirmed";
  }

  function renderStuck(views) {
    var body = $("stuck-body");
    body.replaceChildren();
    var n = 0;
    views.forEach(function (v) {
      (v.steps || []).forEach(function (st) {
        if (st.status !== "stuck") return;
        n++;
        var tr = el("tr");
        tr.dataset.tx = v.id;
        var th = el("th"); th.scope = "row"; th.appendChild(el("code", v.id)); tr.appendChild(th);
        tr.appendChild(el("td", st.id));
        tr.appendChild(el("td", st.service));
        tr.appendChild(el("td", st.attempts));
        tr.appendChild(el("td", st.lastError || "\u2014", "aborted"));
        var act = el("td");
        var btn = el("button", "Retry");
        btn.type = "button";
        btn.setAttribute("aria-label", "Retry the stuck steps of transaction " + v.id);
        btn.addEventListener("click", function () { retry(v.id, btn); });
        act.appendChild(btn);
        tr.appendChild(act);
        body.appendChild(tr);
      });
    });
    $("stuck-empty").hidden = n > 0;
  }

  function retry(id, btn) {
    btn.disabled = true;
    fetch("/v1/transactions/" + encodeURIComponent(id) + "/retry", { method: "POST", headers: authed({ "content-type": "application/json" }) }).then(function (r) {
      return r.json().then(function (body) {
        announce(r.ok
          ? "Retrying " + body.retried + " stuck step(s) of transaction " + id
          : "Could not retry transaction " + id + ": " + ((body.error && (body.error.code + " " + body.error.message)) || r.status));
        refreshSoon();
      });
    }).catch(function (e) { btn.disabled = false; announce("Retry failed: " + e); });
  }
  var txTimer;
  function refreshSoon() { clearTimeout(txTimer); txTimer = setTimeout(loadTransactions, 100); }

  function resolve(b, outcome, label, btn) {
    // A branch not in doubt yet may still be decided by its coordinator: resolving it is forced.
    var force = !b.inDoubt;
    var ok = window.confirm(force
      ? "Force: " + label.toLowerCase() + " branch " + b.branch + " of transaction " + b.tx + "?\\n\\nIt is not in doubt: its coordinator may still decide it, and if it decides the other way the transaction is heuristic-mixed. This forced decision is recorded in the log."
      : label + " branch " + b.branch + " of transaction " + b.tx + "?\\n\\nThis is a heuristic decision: it must match what the coordinator decided. It is recorded in the log.");
    if (!ok) { announce(label + " of " + b.tx + " cancelled."); return; }
    btn.disabled = true;
    fetch("/v1/branches/" + encodeURIComponent(b.tx) + "/resolve", {
      method: "POST",
      headers: authed({ "content-type": "application/json" }),
      body: JSON.stringify(force ? { outcome: outcome, by: "dashboard", force: true } : { outcome: outcome, by: "dashboard" })
    }).then(function (r) {
      return r.json().then(function (body) {
        var text = r.ok
          ? "Resolved transaction " + b.tx + ": " + body.resolved + " by " + body.by + (body.forced ? " (forced; audited in the log)" : " (audited in the log)")
          : "Could not resolve transaction " + b.tx + ": " + ((body.error && (body.error.code + " " + body.error.message)) || r.status);
        var li = el("li", text, r.ok ? outcome : "aborted");
        li.dataset.tx = b.tx;
        $("resolutions").appendChild(li);
        announce(text);
        loadBranches();
      });
    }).catch(function (e) { btn.disabled = false; announce("Resolve failed: " + e); });
  }

  var handlers = {
    "tx-begin": function (d) {
      var t = tx(d.tx);
      if (d.traceId) t.traceId = d.traceId;
      (d.participants || []).forEach(function (p) { part(t, p); });
      if (d.recovered) t.status = "committing";
      if (d.takenFrom) t.takenFrom = d.takenFrom;
    },
    "tx-enlist": function (d) { var t = tx(d.tx); d.participants.forEach(function (p) { part(t, p); }); },
    "tx-vote": function (d) { var t = tx(d.tx); part(t, d).vote = d.vote; if (t.status === "active") t.status = "preparing"; },
    "tx-outcome": function (d) {
      var t = tx(d.tx);
      t.outcome = d.outcome; t.reason = d.reason; t.prepareMs = d.prepareMs;
      t.status = d.outcome === "committed" ? "committing" : "aborting";
      announce("Transaction " + d.tx + " " + d.outcome);
    },
    "tx-ack": function (d) { part(tx(d.tx), d).acknowledged = true; },
    "tx-heuristic": function (d) {
      var t = tx(d.tx);
      var x = part(t, d);
      x.heuristic = d.outcome; x.acknowledged = false;
      t.status = "heuristic-mixed";
      announce("Transaction " + d.tx + " is heuristic-mixed: " + d.service + " finished " + d.outcome + ", the decision was " + d.decision);
    },
    "tx-step": function (d) { part(tx(d.tx), d).vote = "step recorded"; },
    "tx-compensated": function (d) { part(tx(d.tx), d).vote = "step compensated"; refreshSoon(); },
    "tx-confirmed": function (d) { part(tx(d.tx), d).vote = "step confirmed"; refreshSoon(); },
    "tx-cancelled": function (d) { part(tx(d.tx), d).vote = "step cancelled"; refreshSoon(); },
    "tx-stuck": function (d) {
      part(tx(d.tx), d).vote = "step stuck";
      announce("Step " + d.branch + " of transaction " + d.tx + " is stuck: " + d.error);
      refreshSoon();
    },
    "tx-finished": function (d) {
      var t = tx(d.tx);
      t.status = d.status || d.outcome || t.status;
      if (d.outcome) t.outcome = d.outcome;
      t.phase2Ms = d.phase2Ms;
      loadRoutes();
      refreshSoon();
    }
  };

  function connect() {
    var es = new EventSource("/v1/events" + (token ? "?access_token=" + encodeURIComponent(token) : ""));
    var loaded = false;
    es.onopen = function () {
      $("live").textContent = "connected"; $("live").dataset.state = "open";
      // Subscribed first, then the current state: nothing falls between the two. Reconnects
      // send Last-Event-ID and the server replays what was missed.
      if (!loaded) {
        loaded = true;
        getJson("/v1/ui-config").then(function (r) { if (r.ok && r.body.traceUrl) { traceUrl = r.body.traceUrl; renderTx(); } }, function () {});
        loadTransactions(); loadBranches(); loadRoutes();
      }
    };
    es.onerror = function () { $("live").textContent = "reconnecting"; $("live").dataset.state = "closed"; };
    Object.keys(handlers).forEach(function (type) {
      es.addEventListener(type, function (ev) { handlers[type](JSON.parse(ev.data)); renderTx(); });
    });
    // Postgres store: a sibling's log taken over here (its transactions are loaded with it), or
    // this instance's own log taken by a sibling.
    es.addEventListener("takeover", function (ev) {
      var d = JSON.parse(ev.data);
      announce("Took over " + d.log + " (its lease lapsed): finishing its transactions here");
      loadTransactions();
    });
    es.addEventListener("fenced", function (ev) {
      announce("This instance's log " + JSON.parse(ev.data).log + " was taken over by a sibling: it stops coordinating");
    });
    ["branch-status", "branch-ended", "branch-resolved", "branch-in-doubt"].forEach(function (type) {
      es.addEventListener(type, function () { clearTimeout(branchTimer); branchTimer = setTimeout(loadBranches, 50); });
    });
  }

  connect();
  setInterval(loadBranches, 10000);
})();
</script>
</body>
</html>
`
