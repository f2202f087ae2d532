// The spend dashboard. Plain JS and hand-drawn SVG: no build step, nothing fetched but this gateway's API.
// Every figure comes from /admin/usage as the API computed it; amounts are shown to 9 decimals at most.
// Untrusted text (key names, model names) only ever goes through textContent.
"use strict";

(() => {
  const STORAGE_KEY = "gateway.dashboard.adminKey";
  const SIGN_IN_PREFIX = "#sign-in=";
  const SESSION_ID = "gateway.dashboard.sessionKeyId"; // set when the key is a link's session, ours to revoke
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#2b6cb0", "#dd6b20", "#2f855a", "#c53030", "#6b46c1", "#b7791f", "#00838f", "#d53f8c"];
  const OTHER_COLOUR = "#8a94a3";
  const TOP_KEYS = 10;
  // The groups of each grouping the page asks for (`top`): its 7 coloured series, its 10 top keys, the breakdown's
  // 20 rows; the gateway sums the rest in an "other" row (a day), so an answer stays small however many keys, users
  // or sessions spend (a row per key a day, of every key, made 90 days past what Lambda can answer at 200 keys).
  const TOP = 20;
  const DAY_MS = 86400000;

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // --- formatting --------------------------------------------------------------------------

  function groupThousands(digits) {
    return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  // USD to at most 9 decimals (the ledger's precision), at least 2, no exponent.
  function usd(value) {
    const number = Number(value);
    const [whole, frac] = Math.abs(number).toFixed(9).split(".");
    const trimmed = frac.replace(/0+$/, "");
    const sign = number < 0 && (whole !== "0" || trimmed !== "") ? "-" : "";
    return sign + "$" + groupThousands(whole) + "." + trimmed.padEnd(2, "0");
  }

  // Milliseconds to a tenth, as the API's percentiles are a time some request took.
  function ms(value) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(1) + " ms";
  }

  function count(value) {
    return groupThousands(String(Math.round(value)));
  }

  // Code-point order, not the locale's: the same order on every machine, and the API's.
  function byText(a, b) {
    return a < b ? -1 : a > b ? 1 : 0;
  }

  function isoDay(ms) {
    return new Date(ms).toISOString().slice(0, 10);
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function swatch(colour) {
    const box = svg("svg", { class: "swatch", width: 10, height: 10, viewBox: "0 0 10 10", "aria-hidden": "true" });
    box.append(svg("rect", { width: 10, height: 10, rx: 2, fill: colour }));
    return box;
  }

  // --- the API -----------------------------------------------------------------------------

  function adminKey() {
    return sessionStorage.getItem(STORAGE_KEY);
  }

  async function api(path) {
    const response = await fetch(path, {
      headers: { authorization: "Bearer " + adminKey() },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new ApiError(response.status, error.code || "http_" + response.status, error.message || response.statusText);
    }
    return body;
  }

  // The groupings every load shows besides the breakdown, as `view`s of one report: the gateway reads the
  // period's lines once for all of them (a report over a busy month's lines takes seconds).
  const VIEWS = ["", "day,model", "day,key", "key"];

  // The whole answer: `data` (rows by `groupBy`), `views` (rows by each of `views`, in order), `latency`
  // (percentiles over the lines), `tag_names`.
  // A gateway from before `view=` (an older release still serving during a rollout) answers without `views`:
  // each view is then asked for on its own, one after the other.
  async function fetchReport(period, groupBy, views) {
    const body = await api("admin/usage?" + reportParams(period, groupBy, views || []));
    if (views && views.length && !Array.isArray(body.views)) {
      body.views = [];
      for (const view of views) body.views.push(await api("admin/usage?" + reportParams(period, view, [])));
    }
    return body;
  }

  function reportParams(period, groupBy, views) {
    const params = new URLSearchParams({ since: period.since, until: period.until, top: String(TOP) });
    if (groupBy) params.set("group_by", groupBy);
    for (const view of views) params.append("view", view);
    for (const [name, value] of Object.entries(period.filter)) if (value) params.set(name, value);
    return params.toString();
  }

  // One report at a time from this page: a change made while one is in the making waits for it (the gateway
  // makes two of a key's reports at once, and refuses a third with a 429).
  let reporting = Promise.resolve();

  function report(period, groupBy, views, mine) {
    const next = reporting.catch(() => {}).then(() => {
      if (mine !== generation) throw new Superseded();
      return fetchReport(period, groupBy, views);
    });
    reporting = next;
    return next;
  }

  class Superseded extends Error {}

  function currentFilter() {
    return {
      tag: $("filter-tag").value.trim(),
      user: $("filter-user").value.trim(),
      session: $("filter-session").value.trim(),
    };
  }

  // --- loading -----------------------------------------------------------------------------

  function periodWindow(days) {
    const now = Date.now();
    const todayStart = Math.floor(now / DAY_MS) * DAY_MS; // UTC, as the ledger's days are
    const start = todayStart - (days - 1) * DAY_MS;
    const dayList = [];
    for (let t = start; t <= todayStart; t += DAY_MS) dayList.push(isoDay(t));
    // One fixed `until` for every call, so the five answers describe the same ledger.
    return { since: isoDay(start), until: String(now / 1000), days: dayList, filter: currentFilter() };
  }

  function setState(state, message, isError) {
    document.documentElement.dataset.state = state;
    const status = $("status");
    status.textContent = message || "";
    status.classList.toggle("error", Boolean(isError));
  }

  function showSignIn(message) {
    $("sign-in").hidden = false;
    $("controls").hidden = true;
    $("report").hidden = true;
    shown = null;
    setState("signed-out", message, Boolean(message));
    $("key").focus();
  }

  let generation = 0;
  let shown = null; // the period (window and filter) whose figures are on the page, null when none are

  // While a load is in the making the figures on the page are the previous selection's: greyed out. A load that
  // fails leaves none: they would read as the new selection's (a 90-day period over 30 days of another filter).
  function showFigures(state) {
    const figures = $("figures");
    figures.hidden = state === "none";
    figures.classList.toggle("stale", state === "stale");
    figures.setAttribute("aria-busy", String(state === "stale"));
    if (state === "none") {
      shown = null;
      const section = $("report");
      for (const name of ["since", "until", "filter"]) delete section.dataset[name];
    }
  }

  function failed(error, mine) {
    if (mine !== generation || error instanceof Superseded) return;
    // A 401: the key no longer works (a session revoked or ended). A 403 of a link's session says nothing of the
    // session (a proxy's refusal, `ip_not_allowed` from another network): forgotten then, it lived on for hours, and
    // the page, holding it no more, could not sign it out; it stays, with "Sign out". A typed key is only forgotten.
    const ended = error instanceof ApiError && error.status === 401;
    const refused = error instanceof ApiError && error.status === 403 && !sessionStorage.getItem(SESSION_ID);
    if (ended || refused) {
      sessionStorage.removeItem(STORAGE_KEY);
      sessionStorage.removeItem(SESSION_ID);
      showSignIn(`${error.status} ${error.code}: ${error.message}`);
      document.documentElement.dataset.state = "refused";
      return;
    }
    showFigures("none");
    const detail = error instanceof ApiError ? `${error.status} ${error.code}: ${error.message}` : String(error);
    setState("error", "Could not load usage: " + detail, true);
  }

  function ready(period) {
    setState("ready", `${period.since} to ${isoDay(Number(period.until) * 1000)} (UTC), as of ${new Date().toLocaleTimeString()}`);
  }

  async function load() {
    if (!adminKey()) {
      showSignIn("");
      return;
    }
    const mine = ++generation;
    $("sign-in").hidden = true;
    $("controls").hidden = false;
    setState("loading", "Loading…");
    if (shown) showFigures("stale");
    const period = periodWindow(Number($("period").value));
    const breakdown = $("breakdown").value;
    try {
      const [body, health] = await Promise.all([report(period, breakdown, VIEWS, mine), api("health")]);
      if (mine !== generation) return;
      const [overall, byDayModel, byDayKey, byKey] = body.views;
      const total = overall.data;
      // The keys' names as the report gives them (the keys it shows: not every key of the store, as a listing would).
      const names = new Map();
      for (const row of [...byKey.data, ...byDayKey.data]) if (row.key_name) names.set(row.key, row.key_name);
      const keyLabel = (id) => (names.has(id) ? names.get(id) + " · " + id : id);
      const section = $("report");
      section.dataset.since = period.since;
      section.dataset.until = period.until;
      renderPending(health.pending_settlements || 0);
      renderTotals(total[0] || null);
      stackedBars($("chart-model"), period.days, byDayModel, "model", (m) => m);
      stackedBars($("chart-key"), period.days, byDayKey, "key", keyLabel);
      renderTopKeys(byKey, total[0] || null, keyLabel);
      renderLatency(body.latency);
      renderBreakdownChoices(body.tag_names || [], breakdown, body.tag_names_folded || 0);
      // A tag the new lines carry no more (another filter, another period): the control is back on "model", and the
      // table follows it (drawn by the tag, it showed one "(none)" row under a control that said "model").
      const chosen = $("breakdown").value;
      if (chosen === breakdown) renderBreakdown(body, breakdown);
      section.dataset.filter = JSON.stringify(period.filter);
      section.hidden = false;
      shown = period;
      showFigures("fresh");
      ready(period);
      if (chosen !== breakdown) loadBreakdown();
    } catch (error) {
      failed(error, mine);
    }
  }

  // Another breakdown of the figures on the page: only its rows are new (the same window and filter).
  async function loadBreakdown() {
    if (!shown) {
      load();
      return;
    }
    const mine = ++generation;
    const period = shown;
    const breakdown = $("breakdown").value;
    setState("loading", "Loading…");
    showFigures("stale");
    try {
      const body = await report(period, breakdown, [], mine);
      if (mine !== generation) return;
      renderBreakdown(body, breakdown);
      showFigures("fresh");
      ready(period);
    } catch (error) {
      failed(error, mine);
    }
  }

  // --- settlements the store has not taken yet --------------------------------------------------

  function renderPending(waiting) {
    const notice = $("pending");
    notice.hidden = waiting === 0;
    notice.dataset.count = String(waiting);
    notice.textContent = waiting === 0 ? "" :
      `${count(waiting)} settlement${waiting === 1 ? "" : "s"} waiting to be recorded: not in these figures yet ` +
      "(the gateway retries until the store takes them).";
  }

  // --- totals ------------------------------------------------------------------------------

  const ZERO = {
    requests: 0, input_tokens: 0, cached_tokens: 0, cache_write_tokens: 0, output_tokens: 0, reasoning_tokens: 0,
    cost_usd: 0, fee_usd: 0, total_usd: 0, cache_savings_usd: 0, unknown_cost_requests: 0,
  };

  function renderTotals(row) {
    const t = row || ZERO;
    const cards = [
      ["Spend", usd(t.total_usd), "total-spend"],
      ["Provider cost", usd(t.cost_usd), "total-cost"],
      ["Gateway fee", usd(t.fee_usd), "total-fee"],
      ["Caching saved", usd(t.cache_savings_usd), "total-savings"],
      ["Requests", count(t.requests), "total-requests"],
      ["Tokens in / out", `${count(t.input_tokens)} / ${count(t.output_tokens)}`, "total-tokens"],
    ];
    const box = $("totals");
    box.replaceChildren();
    for (const [label, value, id] of cards) {
      const card = el("div", { class: "total" });
      card.append(el("div", { class: "label" }, label), el("div", { class: "value", id }, value));
      box.append(card);
    }
  }

  // --- latency and the breakdown ------------------------------------------------------------

  const LATENCY_PARTS = [["gateway_ms", "Gateway"], ["store_ms", "Store"], ["upstream_ms", "Upstream"]];

  function renderLatency(latency) {
    const body = $("latency").tBodies[0];
    body.replaceChildren();
    for (const [part, label] of LATENCY_PARTS) {
      const values = (latency && latency[part]) || {};
      const tr = el("tr", { "data-part": part });
      tr.append(el("td", { class: "text" }, label), el("td", {}, ms(values.p50)), el("td", {}, ms(values.p95)),
        el("td", {}, ms(values.p99)));
      body.append(tr);
    }
    const requests = latency ? latency.requests : 0;
    $("latency-count").textContent = `over ${count(requests)} request${requests === 1 ? "" : "s"}`;
  }

  // The fixed groupings, then one `tag:NAME` per tag name the period's lines carry.
  // Past the `TOP` the gateway lists (`tag_names_folded`: the names most key families use are listed), the rest are
  // counted in an option of their own, which picks nothing.
  function renderBreakdownChoices(tagNames, selected, folded) {
    const select = $("breakdown");
    for (const option of [...select.options]) if (option.value.startsWith("tag:") || option.disabled) option.remove();
    for (const name of [...tagNames].sort(byText)) select.append(el("option", { value: "tag:" + name }, "tag " + name));
    if (folded) select.append(el("option", { value: "", disabled: "" }, `${count(folded)} more tag names, not listed`));
    select.value = [...select.options].some((o) => o.value === selected) ? selected : "model";
  }

  // A grouping's rows (`grouping.data`, the report's or a view's) apart from its "other" rows, whose `field` is null:
  // the `folded` groups past the `TOP` the gateway kept (none from a gateway that answers no `folded`, whose rows are
  // each a group of its own).
  function splitOther(grouping, field) {
    const named = grouping.data.filter((row) => row[field] !== null);
    const other = grouping.data.filter((row) => row[field] === null);
    return { named, other, folded: grouping.folded || 0 };
  }

  function sumRows(rows) {
    const sum = { ...ZERO, estimated_cost_requests: 0, reserved_cost_requests: 0 };
    for (const row of rows) for (const field of Object.keys(sum)) sum[field] += row[field] || 0;
    return sum;
  }

  function renderBreakdown(answer, field) {
    $("breakdown-name").textContent = field.startsWith("tag:") ? "Tag " + field.slice(4) : field[0].toUpperCase() + field.slice(1);
    const { named, other, folded } = splitOther(answer, field);
    const ranked = named.sort((a, b) => b.total_usd - a.total_usd || byText(a[field], b[field]));
    const body = $("breakdown-table").tBodies[0];
    body.replaceChildren();
    const rest = other.length ? [{ ...sumRows(other), label: `${count(folded)} other${folded === 1 ? "" : "s"}` }] : [];
    for (const row of [...ranked, ...rest]) {
      const tr = row.label === undefined ? el("tr", { "data-value": row[field] }) : el("tr", { "data-other": String(folded) });
      const saved = el("td", { class: row.cache_savings_usd < 0 ? "saved negative" : "saved" }, usd(row.cache_savings_usd));
      const label = row.label !== undefined ? row.label : row[field] === "" ? "(none)" : row[field];
      tr.append(
        el("td", { class: "text" }, label),
        el("td", {}, count(row.requests)),
        el("td", {}, count(row.input_tokens)),
        el("td", {}, count(row.cached_tokens)),
        el("td", {}, count(row.cache_write_tokens)),
        el("td", {}, count(row.output_tokens)),
        el("td", {}, count(row.reasoning_tokens)),
        el("td", { class: "spend" }, usd(row.total_usd)),
        saved,
      );
      body.append(tr);
    }
    if (!ranked.length && !rest.length) {
      const tr = el("tr");
      tr.append(el("td", { class: "text", colspan: "9" }, "No requests in this period"));
      body.append(tr);
    }
  }

  // --- stacked bars ------------------------------------------------------------------------

  // The largest series get a colour each; the rest share one bar segment, "other": those past the palette, and the
  // groups the gateway folded (`splitOther`), whose rows are the "other" segment's too.
  function seriesOf(answer, field) {
    const { named, other, folded } = splitOther(answer, field);
    const sums = new Map();
    for (const row of named) sums.set(row[field], (sums.get(row[field]) || 0) + row.total_usd);
    const ranked = [...sums.entries()].sort((a, b) => b[1] - a[1] || byText(String(a[0]), String(b[0])));
    const crowded = ranked.length > PALETTE.length || other.length > 0;
    const shown = crowded ? Math.min(ranked.length, PALETTE.length - 1) : ranked.length;
    const series = ranked.slice(0, shown).map(([name, sum], i) => ({ name, sum, colour: PALETTE[i], members: [name] }));
    if (crowded) {
      const rest = ranked.slice(shown);
      series.push({
        name: null,
        sum: rest.reduce((s, [, v]) => s + v, 0) + other.reduce((s, row) => s + row.total_usd, 0),
        colour: OTHER_COLOUR,
        members: [...rest.map(([name]) => name), null],
        count: rest.length + folded,
      });
    }
    return series;
  }

  function niceScale(max) {
    if (!(max > 0)) return { top: 1, step: 0.25 };
    const raw = max / 4;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw * (1 - 1e-12));
    return { top: Math.ceil(max / step - 1e-9) * step, step };
  }

  function tickLabel(value, step) {
    const decimals = Math.min(9, Math.max(2, Math.ceil(-Math.log10(step)) + 1));
    const [whole, frac] = value.toFixed(decimals).split(".");
    const trimmed = frac.replace(/0+$/, "").padEnd(2, "0");
    return "$" + groupThousands(whole) + "." + trimmed;
  }

  function stackedBars(container, days, answer, field, labelOf) {
    const rows = answer.data;
    const series = seriesOf(answer, field);
    const seriesOfName = new Map();
    for (const s of series) for (const m of s.members) seriesOfName.set(m, s);

    // spend[day][series index]
    const spend = new Map(days.map((d) => [d, series.map(() => 0)]));
    for (const row of rows) {
      const perDay = spend.get(row.day);
      if (perDay) perDay[series.indexOf(seriesOfName.get(row[field]))] += row.total_usd;
    }
    const dayTotals = days.map((d) => spend.get(d).reduce((a, b) => a + b, 0));
    const { top, step } = niceScale(Math.max(0, ...dayTotals));

    const width = 1100;
    const height = 280;
    const margin = { left: 96, right: 12, top: 10, bottom: 26 };
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const band = plotW / days.length;
    const barW = Math.max(1, band * 0.72);
    const y = (v) => margin.top + plotH - (v / top) * plotH;

    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `spend per day by ${field}` });
    const axis = svg("g", { class: "axis" });
    for (let v = 0; v <= top + step / 2; v += step) {
      const yy = y(v);
      axis.append(svg("line", { class: "grid", x1: margin.left, x2: width - margin.right, y1: yy, y2: yy }));
      axis.append(svg("text", { x: margin.left - 8, y: yy + 4, "text-anchor": "end" }, tickLabel(v, step)));
    }
    const labelEvery = Math.ceil(days.length / 12);
    days.forEach((day, i) => {
      if ((days.length - 1 - i) % labelEvery !== 0) return;
      const x = margin.left + band * (i + 0.5);
      axis.append(svg("text", { x, y: height - 8, "text-anchor": "middle" }, day.slice(5)));
    });
    chart.append(axis);

    const bars = svg("g", { class: "bars" });
    days.forEach((day, i) => {
      let base = 0;
      const x = margin.left + band * i + (band - barW) / 2;
      spend.get(day).forEach((value, s) => {
        if (!(value > 0)) return;
        const y0 = y(base);
        const y1 = y(base + value);
        base += value;
        const rect = svg("rect", {
          class: "bar",
          x: x.toFixed(2),
          y: y1.toFixed(2),
          width: barW.toFixed(2),
          height: Math.max(0.5, y0 - y1).toFixed(2),
          fill: series[s].colour,
          "data-series": series[s].name === null ? "other" : series[s].name,
        });
        const name = series[s].name === null ? "other" : labelOf(series[s].name);
        rect.append(svg("title", {}, `${day} · ${name}: ${usd(value)}`));
        bars.append(rect);
      });
    });
    chart.append(bars);
    chart.append(svg("line", { class: "baseline", x1: margin.left, x2: width - margin.right, y1: y(0), y2: y(0) }));
    if (!rows.length) {
      chart.append(svg("text", { class: "empty", x: margin.left + plotW / 2, y: margin.top + plotH / 2, "text-anchor": "middle" }, "No spend in this period"));
    }

    const legend = el("ul", { class: "legend" });
    for (const s of series) {
      const item = el("li");
      const label = s.name === null ? `other (${s.count})` : labelOf(s.name);
      item.append(swatch(s.colour), el("span", { class: "name" }, label), el("span", { class: "sum" }, usd(s.sum)));
      legend.append(item);
    }
    container.replaceChildren(chart, legend);
  }

  // --- top keys ----------------------------------------------------------------------------

  function keyRow(label, row, colour) {
    const tr = el("tr");
    const name = el("td", { class: "text" });
    if (colour) name.append(swatch(colour));
    name.append(document.createTextNode(label));
    tr.append(
      name,
      el("td", {}, count(row.requests)),
      el("td", {}, count(row.input_tokens)),
      el("td", {}, count(row.cached_tokens)),
      el("td", {}, count(row.output_tokens)),
      el("td", {}, usd(row.cost_usd)),
      el("td", {}, usd(row.fee_usd)),
      el("td", { class: "spend" }, usd(row.total_usd)),
    );
    return tr;
  }

  function renderTopKeys(answer, total, keyLabel) {
    const { named, other, folded } = splitOther(answer, "key");
    const ranked = named.sort((a, b) => b.total_usd - a.total_usd || byText(a.key, b.key));
    const body = $("top-keys").tBodies[0];
    body.replaceChildren();
    for (const row of ranked.slice(0, TOP_KEYS)) {
      const tr = keyRow(keyLabel(row.key), row);
      tr.dataset.key = row.key;
      body.append(tr);
    }
    const rest = ranked.slice(TOP_KEYS);
    const others = rest.length + folded;
    if (others) body.append(keyRow(`${count(others)} other keys`, sumRows([...rest, ...other])));
    if (!ranked.length) {
      const tr = el("tr");
      tr.append(el("td", { class: "text", colspan: "8" }, "No requests in this period"));
      body.append(tr);
    }
    const foot = $("top-keys").tFoot;
    const all = keyRow(`All keys (${count(ranked.length + folded)})`, total || ZERO);
    all.id = "all-keys";
    foot.replaceChildren(all);

    const unpriced = (total || ZERO).unknown_cost_requests;
    const note = $("unpriced");
    note.hidden = !unpriced;
    note.textContent = unpriced
      ? `${count(unpriced)} requests used a model with no known price; their cost is unknown and not in these sums.`
      : "";
  }

  // --- a one-time sign-in link (`gateway dashboard`) ---------------------------------------------

  // The token is in the fragment, which never reaches a server; it leaves the address bar (and so the history)
  // before anything else happens, and is traded once for a session key kept like a typed-in one.
  function takeToken() {
    const token = location.hash.slice(SIGN_IN_PREFIX.length);
    history.replaceState(null, "", location.pathname + location.search);
    return token;
  }

  async function signInFromLink(token) {
    let body = null;
    let response = null;
    try {
      response = await fetch("dashboard/sign-in", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token }),
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
      body = await response.json();
    } catch (error) {
      body = { error: { message: String(error) } };
    }
    if (response && response.ok && body && body.key) {
      sessionStorage.setItem(STORAGE_KEY, body.key);
      sessionStorage.setItem(SESSION_ID, body.key_id);
      return true;
    }
    const message = (body && body.error && body.error.message) || "the gateway did not answer";
    $("link-error-text").textContent = message;
    $("link-error").hidden = false;
    return false;
  }

  // --- signing out ---------------------------------------------------------------------------

  // A session a sign-in link made is revoked, not just forgotten: a copy of it elsewhere stops working too. It is
  // forgotten only once the gateway says it is revoked (or that it has ended already): one whose revocation was
  // refused (the store unavailable, a 409, a gateway in between failing) or never arrived lives on for hours, so the
  // page keeps it, says so, and "Sign out" tries again. A key typed in is the operator's own, and only forgotten.
  async function signOut() {
    const session = sessionStorage.getItem(SESSION_ID);
    generation++;
    if (!session) {
      forget("Key forgotten.");
      return true;
    }
    const button = $("sign-out");
    button.disabled = true;
    setState("signing-out", "Revoking the session…");
    const failure = await revoke(adminKey(), session);
    button.disabled = false;
    if (failure === null) {
      forget("Signed out; the session is revoked.");
      return true;
    }
    if (failure === ENDED) {
      forget("Signed out; the session had ended already.");  // (revoked, or expired: no key works with it)
      return true;
    }
    setState("sign-out-failed", `Not signed out: the session was not revoked (${failure}); it still works. ` +
      "Sign out again to retry.", true);
    return false;
  }

  const ENDED = "ended";

  // The session `id` revoked with its own `key`: null once revoked, `ENDED` where it had ended already (a 401: no key
  // works with it), else what went wrong.
  async function revoke(key, id) {
    try {
      const response = await fetch("admin/keys/" + encodeURIComponent(id) + "/revoke", {
        method: "POST",
        headers: { authorization: "Bearer " + key },
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
      if (response.status === 401) return ENDED;
      if (response.ok) return null;
      let error = {};
      try {
        error = (await response.json()).error || {};
      } catch (_) {
        error = {};
      }
      return `${response.status} ${error.code || "http_" + response.status}: ${error.message || response.statusText}`;
    } catch (error) {
      return `the gateway did not answer (${error})`;
    }
  }

  function forget(message) {
    sessionStorage.removeItem(STORAGE_KEY);
    sessionStorage.removeItem(SESSION_ID);
    showSignIn(message);
  }

  // --- wiring ------------------------------------------------------------------------------

  async function begin() {
    if (location.hash.startsWith(SIGN_IN_PREFIX) && !(await signInFromLink(takeToken()))) {
      showSignIn("");
      document.documentElement.dataset.state = "link-refused";
      return;
    }
    $("link-error").hidden = true;
    load();
  }

  // A link pasted into the open page changes its fragment alone, which loads nothing: read here as `begin` reads it at
  // a load (ignored, the token stayed in the address bar and the history, unused). Its token is traded first: a link
  // that no longer works (used, expired) leaves the page as it was, its session with it. Then a session this page
  // held is revoked (forgotten unrevoked, it would live on where nothing holds it); a revocation refused is said, and
  // the new session kept.
  async function linkPasted() {
    if (!location.hash.startsWith(SIGN_IN_PREFIX)) return;
    const token = takeToken();
    generation++;
    const before = { key: adminKey(), session: sessionStorage.getItem(SESSION_ID) };
    if (!(await signInFromLink(token))) {
      if (!before.key) {
        showSignIn("");
        document.documentElement.dataset.state = "link-refused";
      } else {
        load();  // (the page as it was: a load in flight when the link came was superseded)
      }
      return;
    }
    $("link-error").hidden = true;
    let failure = null;
    if (before.session && before.key) {
      failure = await revoke(before.key, before.session);
      if (failure === ENDED) failure = null;
    }
    await load();
    if (failure !== null) {
      setState("sign-out-failed", `Signed in; the previous session was not revoked (${failure}): it still works ` +
        "until it expires.", true);
    }
  }

  function start() {
    $("sign-in").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("key");
      const value = input.value.trim();
      input.value = "";
      if (!value) return;
      sessionStorage.setItem(STORAGE_KEY, value);
      sessionStorage.removeItem(SESSION_ID);
      $("link-error").hidden = true;
      load();
    });
    $("period").addEventListener("change", load);
    $("breakdown").addEventListener("change", loadBreakdown);
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      load();
    });
    $("filter-clear").addEventListener("click", () => {
      for (const id of ["filter-tag", "filter-user", "filter-session"]) $(id).value = "";
      load();
    });
    $("refresh").addEventListener("click", load);
    $("sign-out").addEventListener("click", signOut);
    window.addEventListener("hashchange", linkPasted);
    begin();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
