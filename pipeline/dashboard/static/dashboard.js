// The status page: polls /api/snapshot and draws it with uPlot (vendored, served locally).
// Every text goes in through textContent: nothing read from Redis is parsed as HTML.
"use strict";
(() => {
  const page = { charts: {}, snapshot: null, refreshes: 0, failures: 0, lastOk: null };
  window.unlearnDashboard = page; // for the browser test and for the curious
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2",
    "#ca8a04", "#db2777", "#4b5563", "#65a30d", "#7c3aed"];
  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") node.className = v;
      else if (k === "data") Object.assign(node.dataset, v);
      else node.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }
  const num = (x, digits = 3) => (x === null || x === undefined ? "-" : Number(x).toPrecision(digits));
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
  function age(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (seconds >= size) return `${(seconds / size).toFixed(1)} ${unit}`;
    }
    return `${seconds.toFixed(0)} s`;
  }

  // -- charts ------------------------------------------------------------------------
  // One uPlot per container; rebuilt only when its series change, else setData.
  function plot(container, { labels, time = true, yLog = false, right = null, xLabel }, data) {
    const key = JSON.stringify([labels, right && right.labels]);
    const old = page.charts[container.id];
    const width = Math.max(300, container.clientWidth || 400);
    if (old && old.key === key) {
      old.chart.setData(data);
    } else {
      if (old) old.chart.destroy();
      container.replaceChildren();
      const series = [{ label: xLabel || (time ? "time" : "version") }];
      labels.forEach((label, i) => series.push({
        label, stroke: COLORS[i % COLORS.length], width: 2, points: { show: !time },
      }));
      const scales = { x: { time }, y: yLog ? { distr: 3 } : {} };
      const axes = [time ? {} : { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500] },
        yLog ? { values: (u, splits) => splits.map((v) => (v === null ? "" : v.toExponential(0))) } : {}];
      if (right) {
        scales[right.scale] = right.range ? { range: right.range } : {};
        axes.push({ scale: right.scale, side: 1, grid: { show: false } });
        right.labels.forEach((label, i) => series.push({
          label, scale: right.scale, stroke: right.colors ? right.colors[i] : COLORS[(labels.length + i) % COLORS.length],
          width: 2, dash: right.dash ? right.dash[i] : undefined,
        }));
      }
      const chart = new uPlot({ width, height: 200, series, scales, axes, legend: { live: true } },
        data, container);
      page.charts[container.id] = { chart, key };
    }
    const last = data.slice(1).map((s) => {
      for (let i = s.length - 1; i >= 0; i--) if (s[i] !== null && s[i] !== undefined) return s[i];
      return null;
    });
    container.dataset.points = String(data[0].length);
    container.dataset.last = JSON.stringify(last);
  }

  // -- models ------------------------------------------------------------------------
  function figure(label, value, cls) {
    return el("div", { class: "figure" }, el("div", { class: `figure-value ${cls || ""}`.trim() }, value),
      el("div", { class: "figure-label" }, label));
  }

  function modelCard(m) {
    let card = $(`model-${m.model_id}`);
    if (!card) {
      card = el("div", { class: "model", id: `model-${m.model_id}`, data: { model: m.model_id } },
        el("h3", {}, `${m.model_id} `, el("span", { class: "muted" }, `(${m.kind})`)),
        el("div", { class: "figures" }),
        el("div", { class: "grid" },
          el("figure", {}, el("figcaption", {}, "certificate against budget, by version (log scale)"),
            el("div", { class: "chart", id: `chart-${m.model_id}-certificate` })),
          el("figure", {}, el("figcaption", {}, "holdout score, overall and per class, by version"),
            el("div", { class: "chart", id: `chart-${m.model_id}-score` })),
          el("figure", {}, el("figcaption", {}, "records held, by version"),
            el("div", { class: "chart", id: `chart-${m.model_id}-records` })),
          el("figure", {}, el("figcaption", {}, "retrains and why"),
            el("table", { class: "small retrains" }))));
      $("models").append(card);
    }
    return card;
  }

  function renderModel(m, stale) {
    const card = modelCard(m);
    card.classList.toggle("stale", stale);
    const c = m.current;
    const share = m.oldest_pending_age_s === null ? null : m.oldest_pending_age_s / m.legal_deadline_s;
    const overBudget = c.certificate !== null && c.budget !== null && c.certificate > c.budget;
    const audit = m.audit && !m.audit.error
      ? figure(`audit of v${m.audit.version}`, m.audit.verdict, m.audit.verdict)
      : figure("audit", m.audit && m.audit.error ? "unreadable" : "none yet", "skipped");
    card.querySelector(".figures").replaceChildren(
      figure("current version", el("span", { class: "version", data: { version: c.version } }, `v${c.version}`)),
      figure("made by", c.method),
      figure("records held", el("span", { class: "records" }, String(c.n_records))),
      figure("certificate / budget", `${num(c.certificate)} / ${num(c.budget)}`, overBudget ? "bad-text" : ""),
      figure(`holdout ${c.score_name}`, num(c.score, 4)),
      figure("pending deletions", String(m.pending)),
      figure("oldest pending (share of deadline)",
        m.pending ? `${age(m.oldest_pending_age_s)} (${(100 * share).toFixed(2)} %)` : "-",
        share !== null && share >= 1 ? "bad-text" : ""),
      figure("retrain in flight", m.retrain_in_flight
        ? `${m.retrain_in_flight.reason} ${(100 * m.retrain_in_flight.progress).toFixed(0)} %` : "-"),
      audit);
    const v = m.versions;
    const xs = v.map((r) => r.version);
    const pos = (x) => (x === null || x <= 0 ? null : x); // log scale: no zero
    plot($(`chart-${m.model_id}-certificate`), { labels: ["certificate", "budget"], time: false, yLog: true },
      [xs, v.map((r) => pos(r.certificate)), v.map((r) => pos(r.budget))]);
    const classes = [...new Set(v.flatMap((r) => Object.keys(r.class_scores)))].sort();
    plot($(`chart-${m.model_id}-score`),
      { labels: [c.score_name, ...classes.map((k) => `class ${k}`)], time: false },
      [xs, v.map((r) => r.score), ...classes.map((k) => v.map((r) => r.class_scores[k] ?? null))]);
    plot($(`chart-${m.model_id}-records`), { labels: ["records"], time: false },
      [xs, v.map((r) => r.n_records)]);
    const refits = v.filter((r) => r.method === "fit" || r.method === "retrain").reverse();
    card.querySelector(".retrains").replaceChildren(
      el("tr", {}, el("th", {}, "version"), el("th", {}, "how"), el("th", {}, "why"), el("th", {}, "when")),
      ...refits.map((r) => el("tr", {}, el("td", {}, `v${r.version}`), el("td", {}, r.method),
        el("td", {}, r.method === "fit" ? "first fit" : (r.retrain_reason || "-")), el("td", {}, when(r.created_at)))));
  }

  // -- the stream --------------------------------------------------------------------
  function keysOf(points, field) {
    return [...new Set(points.flatMap((p) => Object.keys(p[field] || {})))].sort();
  }

  function renderStream(s) {
    const pts = s.stream.points;
    const ts = pts.map((p) => p.t);
    plot($("chart-deletions"), { labels: ["deletions/s"] }, [ts, pts.map((p) => p.deletions_per_s)]);
    plot($("chart-latency"), { labels: ["p50", "p95", "p99"] },
      [ts, ...["p50", "p95", "p99"].map((q) => pts.map((p) => p.latency[q]))]);
    const models = keysOf(pts, "pending");
    plot($("chart-pending"), {
      labels: models.map((m) => `${m} pending`),
      right: { scale: "%", labels: [...models.map((m) => `${m} oldest, % of deadline`), "deadline"],
        range: [0, 110], dash: [...models.map(() => [4, 4]), [10, 5]],
        colors: [...models.map((_, i) => COLORS[(i + 2) % COLORS.length]), "#b91c1c"] },
    }, [ts, ...models.map((m) => pts.map((p) => (p.pending ? p.pending[m] ?? null : null))),
      ...models.map((m) => pts.map((p) => (p.oldest_pending_share ? 100 * (p.oldest_pending_share[m] ?? 0) : null))),
      pts.map(() => 100)]);
    const reasons = keysOf(pts, "dead_letters");
    plot($("chart-dead-letters"), { labels: reasons.length ? reasons : ["none"] },
      [ts, ...(reasons.length ? reasons : ["none"]).map((r) => pts.map((p) => p.dead_letters[r] ?? 0))]);
    const topics = keysOf(pts, "lag");
    plot($("chart-lag"), { labels: topics.length ? topics : ["no lag reported"] },
      [ts, ...(topics.length ? topics : ["-"]).map((t) => pts.map((p) => p.lag[t] ?? null))]);
    const triggers = s.stream.totals.retrain_triggers;
    const rows = {};
    for (const [key, count] of Object.entries(triggers)) {
      const [reason, outcome] = key.split("/");
      rows[reason] = rows[reason] || {};
      rows[reason][outcome] = count;
    }
    const outcomes = [...new Set(Object.values(rows).flatMap((r) => Object.keys(r)))].sort();
    const retrains = s.stream.totals.retrains;
    if (Object.keys(retrains).length) outcomes.push("refits run");
    for (const [reason, n] of Object.entries(retrains)) {
      rows[reason] = rows[reason] || {};
      rows[reason]["refits run"] = n;
    }
    $("retrain-triggers").replaceChildren(
      el("tr", {}, el("th", {}, "reason"), ...outcomes.map((o) => el("th", {}, o))),
      ...Object.keys(rows).sort().map((r) => el("tr", {}, el("td", {}, r),
        ...outcomes.map((o) => el("td", {}, String(rows[r][o] ?? 0))))));
  }

  // -- audits, processes, sources ---------------------------------------------------
  function renderAudits(models) {
    const parts = [...new Set(models.flatMap((m) => (m.audit && m.audit.parts ? m.audit.parts.map((p) => p.part) : [])))];
    $("audits").replaceChildren(
      el("tr", {}, el("th", {}, "model"), el("th", {}, "version"), el("th", {}, "verdict"),
        ...parts.map((p) => el("th", {}, p)), el("th", {}, "failed checks"), el("th", {}, "audited")),
      ...models.map((m) => {
        const a = m.audit;
        if (!a || a.error) {
          return el("tr", { data: { model: m.model_id } }, el("td", {}, m.model_id),
            el("td", { colspan: String(parts.length + 4) }, a ? a.error : "not audited yet (`unlearn audit MODEL`)"));
        }
        const by = Object.fromEntries(a.parts.map((p) => [p.part, p]));
        return el("tr", { data: { model: m.model_id, verdict: a.verdict } }, el("td", {}, m.model_id),
          el("td", {}, `v${a.version}`), el("td", { class: a.verdict }, a.verdict),
          ...parts.map((p) => el("td", { class: by[p] ? by[p].verdict : "skipped" }, by[p] ? by[p].verdict : "-")),
          el("td", {}, a.parts.flatMap((p) => p.failed).join(", ") || "-"), el("td", {}, when(a.audited_at)));
      }));
  }

  function renderProcesses(s) {
    const status = Object.fromEntries(s.sources.metrics.map((m) => [m.url, m]));
    const rows = s.workers.map((w) => {
      const url = w.metrics_port ? `http://127.0.0.1:${w.metrics_port}/metrics` : null;
      const m = url && status[url];
      return el("tr", {}, el("td", {}, `worker ${w.name}`), el("td", {}, String(w.pid ?? "-")),
        el("td", {}, String(w.assigned_partitions ?? "-")), el("td", {}, url || "-"),
        el("td", { class: m && m.ok ? "ok-text" : "bad-text" }, m ? (m.ok ? "up" : m.error) : "-"));
    });
    const known = new Set(s.workers.map((w) => `http://127.0.0.1:${w.metrics_port}/metrics`));
    for (const m of s.sources.metrics.filter((x) => !known.has(x.url))) {
      rows.push(el("tr", {}, el("td", {}, "other target"), el("td", {}, "-"), el("td", {}, "-"),
        el("td", {}, m.url), el("td", { class: m.ok ? "ok-text" : "bad-text" }, m.ok ? "up" : m.error)));
    }
    $("workers").replaceChildren(el("tr", {}, el("th", {}, "process"), el("th", {}, "pid"),
      el("th", {}, "partitions"), el("th", {}, "metrics"), el("th", {}, "scrape")), ...rows);
  }

  function renderSources(s) {
    const banners = [];
    const redis = s.sources.redis;
    $("source-redis").className = `pill ${redis.ok ? "ok" : "down"}`;
    $("source-redis").textContent = redis.ok ? "Redis up" : "Redis down";
    if (!redis.ok) {
      banners.push(el("div", { class: "banner down", data: { source: "redis" } },
        `Redis does not answer (${redis.error}). Models, receipts and audits below are `,
        redis.as_of ? `as read at ${when(redis.as_of)}.` : "not known yet."));
    }
    const metrics = s.sources.metrics;
    const up = metrics.filter((m) => m.ok).length;
    $("source-metrics").className = `pill ${metrics.length && up === metrics.length ? "ok" : "down"}`;
    $("source-metrics").textContent = `metrics ${up}/${metrics.length} up`;
    if (!metrics.length) {
      banners.push(el("div", { class: "banner", data: { source: "metrics" } },
        "No process exposes /metrics here: is a worker running (`unlearn worker`)? The stream's charts stay empty until one does."));
    }
    for (const m of metrics.filter((x) => !x.ok)) {
      banners.push(el("div", { class: "banner down", data: { source: "metrics" } },
        `${m.url} does not answer (${m.error}): the stream's series miss that process.`));
    }
    return banners;
  }

  function render(s) {
    $("title").textContent = s.title;
    document.title = `${s.title}: status`;
    $("namespace").textContent = `key namespace ${s.namespace}`;
    $("updated").textContent = `updated ${new Date(s.generated_at * 1000).toLocaleTimeString()}, every ${s.refresh_s} s`;
    const banners = renderSources(s);
    $("banners").replaceChildren(...banners);
    const stale = !s.sources.redis.ok;
    if (s.models.length) {
      const first = $("models").querySelector("p");
      if (first) first.remove();
      s.models.forEach((m) => renderModel(m, stale));
    }
    renderStream(s);
    renderAudits(s.models);
    renderProcesses(s);
  }

  async function poll() {
    let delay = 2000;
    try {
      const reply = await fetch("/api/snapshot", { cache: "no-store" });
      if (!reply.ok) throw new Error(`HTTP ${reply.status}`);
      const s = await reply.json();
      page.snapshot = s;
      page.lastOk = Date.now();
      render(s);
      page.refreshes += 1;
      document.body.dataset.refreshes = String(page.refreshes);
      delay = 1000 * s.refresh_s;
    } catch (err) {
      page.failures += 1;
      const since = page.lastOk ? new Date(page.lastOk).toLocaleTimeString() : "never";
      $("banners").replaceChildren(el("div", { class: "banner down", data: { source: "server" } },
        `The status page's server does not answer (${err.message}); the values shown are from ${since}. Retrying.`));
      $("source-redis").className = "pill down";
      $("source-metrics").className = "pill down";
    }
    setTimeout(poll, delay);
  }

  // -- the receipt lookup ------------------------------------------------------------
  async function subjectToken(subject) {
    // pipeline.store.keys.subject_token: the first 32 hex characters of SHA-256(utf-8)
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(subject));
    return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("").slice(0, 32);
  }

  function guarantee(r) {
    if (r.status === "already_absent") return `${r.model_id} held none of its data`;
    if (r.status === "rejected") return `rejected by ${r.model_id}`;
    if (!r.final) {
      return `not yet forgotten by ${r.model_id}: received ${when(r.received_at)}, due ${when(r.due_at)}${r.overdue ? " (OVERDUE)" : ""}`;
    }
    let how;
    if (r.method === "retrain" || r.method === "fit") how = "refitted without the data";
    else if (r.certificate === null || r.certificate === undefined) how = "exact removal (the model is re-solved without the data)";
    else how = `certified removal: gradient residual ${num(r.certificate)} within the budget ${num(r.budget)}` +
      (r.budget !== null && r.certificate > r.budget ? " (OVER BUDGET)" : "");
    return `forgotten by ${r.model_id} in version ${r.version} (${r.method}, ${r.n_records} record(s)): ${how}`;
  }

  function renderReceipts(what, answer) {
    const rs = answer.receipts;
    const out = $("lookup-result");
    out.dataset.found = String(rs.length);
    if (!rs.length) {
      out.replaceChildren(el("p", { class: "answer" }, what.by === "request"
        ? "No receipt for this request: an unknown id, or not processed yet."
        : `No deletion request names this subject (token ${answer.subject_token}).`));
      return;
    }
    const done = rs.every((r) => r.final && r.status !== "rejected");
    out.replaceChildren(
      el("p", { class: `answer ${done ? "ok-text" : "bad-text"}`, data: { forgotten: String(done) } },
        done ? "Forgotten: yes, by every model that held the data." : "Forgotten: not (yet) everywhere."),
      el("p", { class: "muted" }, what.by === "subject"
        ? `subject token ${answer.subject_token}; ${new Set(rs.map((r) => r.request_id)).size} request(s)`
        : `request ${answer.request_id}`),
      el("ul", {}, rs.map((r) => el("li", {}, guarantee(r)))),
      el("table", { class: "small" },
        el("tr", {}, ...["request", "model", "status", "version", "method", "records", "certificate", "budget",
          "received", "completed", "due"].map((h) => el("th", {}, h))),
        rs.map((r) => el("tr", { data: { request: r.request_id, model: r.model_id, status: r.status, version: String(r.version ?? "") } },
          el("td", {}, r.request_id), el("td", {}, r.model_id), el("td", {}, r.status),
          el("td", {}, r.version ?? "-"), el("td", {}, r.method ?? "-"), el("td", {}, String(r.n_records)),
          el("td", {}, num(r.certificate)), el("td", {}, num(r.budget)), el("td", {}, when(r.received_at)),
          el("td", {}, when(r.completed_at)), el("td", { class: r.overdue ? "bad-text" : "" }, when(r.due_at))))));
  }

  $("lookup").addEventListener("change", () => {
    const by = document.querySelector("input[name=by]:checked").value;
    $("lookup-id").placeholder = by === "request" ? "request id" : "subject id (never sent)";
  });
  $("lookup").addEventListener("submit", async (event) => {
    event.preventDefault();
    const by = document.querySelector("input[name=by]:checked").value;
    const raw = $("lookup-id").value.trim();
    const out = $("lookup-result");
    delete out.dataset.found;
    let query;
    if (by === "subject") {
      if (!(window.crypto && crypto.subtle)) {
        out.replaceChildren(el("p", { class: "bad-text" }, "This browser only hashes in a secure context: open the page on 127.0.0.1 or over HTTPS."));
        return;
      }
      query = `subject=${await subjectToken(raw)}`;
      $("lookup-id").value = ""; // the subject id stays nowhere on the page
    } else {
      query = `request=${encodeURIComponent(raw)}`;
    }
    out.replaceChildren(el("p", { class: "muted" }, "looking up..."));
    try {
      const reply = await fetch(`/api/receipts?${query}`, { cache: "no-store" });
      const answer = await reply.json();
      if (!reply.ok) throw new Error(answer.error || `HTTP ${reply.status}`);
      renderReceipts({ by }, answer);
    } catch (err) {
      out.dataset.found = "error";
      out.replaceChildren(el("p", { class: "bad-text" }, `The lookup failed: ${err.message}`));
    }
  });

  window.addEventListener("resize", () => {
    for (const { chart } of Object.values(page.charts)) {
      const w = chart.root.parentElement.clientWidth;
      if (w) chart.setSize({ width: w, height: 200 });
    }
  });
  poll();
})();
