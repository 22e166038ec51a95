// The live job page: sign in with an API token, list the tenant's jobs, follow one live.
//
// The token lives in sessionStorage only (this tab, until "Sign out" or the tab closes); it is
// sent as "Authorization: Bearer" on every fetch and never put in a URL or a cookie. That is
// also why live updates are read with fetch() and a small Server-Sent Events parser rather than
// EventSource, which cannot send a header. Everything is rendered with textContent, never HTML.
"use strict";

(() => {
  const TOKEN_KEY = "fanout.token";
  const PAGE_SIZE = 50;
  const LIST_MAX = 200; // the API's largest page
  const LIST_REFRESH_MS = 3000;
  const ERRORS_SHOWN = 20;
  const ERRORS_REFRESH_MS = 2000;
  const ANNOUNCE_EVERY_MS = 5000;
  const RETRY_FIRST_MS = 1000;
  const RETRY_MOST_MS = 15000;
  const ENDED = new Set(["completed", "failed", "cancelled"]);
  const CAN_PAUSE = new Set(["scheduled", "pending", "running"]);
  const JOB_HASH = /^#job\/([A-Za-z0-9_-]{1,80})$/;

  const $ = (id) => document.getElementById(id);
  const views = {
    signIn: $("view-sign-in"), list: $("view-list"), job: $("view-job"),
    compose: $("view-compose"),
  };

  class Unauthorized extends Error {}
  class ApiFailure extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // ---- the token: sessionStorage only ----

  function getToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  }

  function setToken(value) {
    sessionStorage.setItem(TOKEN_KEY, value);
  }

  function clearToken() {
    try {
      sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      // storage disabled: nothing was kept
    }
  }

  // ---- the API ----

  async function api(path, { method = "GET", signal, token, json, form } = {}) {
    const secret = token ?? getToken();
    if (!secret) throw new Unauthorized("not signed in");
    const headers = { Authorization: `Bearer ${secret}`, Accept: "application/json" };
    let payload;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(json);
    } else if (form !== undefined) {
      payload = form; // multipart: the browser sets the boundary
    }
    const response = await fetch(path, {
      method,
      signal,
      body: payload,
      cache: "no-store",
      credentials: "omit",
      headers,
    });
    if (response.status === 401) throw new Unauthorized("token refused");
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      const failure = new ApiFailure(
        response.status,
        error.code || "http_error",
        error.message || `the service answered ${response.status}`,
      );
      failure.field = error.field || null;
      throw failure;
    }
    return body;
  }

  function isAbort(err) {
    return err && err.name === "AbortError";
  }

  function handleError(err, what) {
    if (isAbort(err)) return;
    if (err instanceof Unauthorized) {
      signOut("The service refused the token (401): it is missing, wrong or revoked. " +
        "Sign in again.");
      return;
    }
    const reason = err instanceof ApiFailure ? err.message : "the service could not be reached";
    notify(`Could not ${what}: ${reason}.`, "error");
  }

  // ---- small helpers ----

  function notify(text, kind = "info") {
    const box = $("notice");
    box.textContent = text;
    box.dataset.kind = kind;
    box.hidden = !text;
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      signal?.addEventListener("abort", done);
    });
  }

  const number = (n) => (typeof n === "number" ? n.toLocaleString() : "–");

  function shortId(id) {
    return id.length > 12 ? `${id.slice(0, 10)}…` : id;
  }

  function percent(progress) {
    const value = Math.floor((progress || 0) * 1000) / 10;
    return `${value.toFixed(value >= 100 || value === 0 ? 0 : 1)}%`;
  }

  function duration(seconds) {
    if (typeof seconds !== "number") return "–";
    const s = Math.round(seconds);
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function setTime(element, iso) {
    element.textContent = "";
    if (!iso) {
      element.textContent = "–";
      return;
    }
    const time = document.createElement("time");
    time.dateTime = iso;
    time.textContent = new Date(iso).toLocaleString(undefined, {
      year: "numeric", month: "short", day: "numeric",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
    element.append(time);
  }

  function setBadge(element, status) {
    element.textContent = status;
    element.dataset.status = status;
  }

  function cell(row, label, className) {
    const td = row.insertCell();
    td.dataset.label = label;
    if (className) td.className = className;
    return td;
  }

  // ---- views and routing (the hash names a job, never anything secret) ----

  let currentView = null;

  function showView(name, title) {
    for (const [key, section] of Object.entries(views)) section.hidden = key !== name;
    $("sign-out").hidden = name === "signIn";
    document.title = title ? `${title} · fanout` : "fanout jobs";
    if (currentView !== name) {
      currentView = name;
      notify(""); // a message belongs to the view it was shown on
      const heading = views[name].querySelector("h1");
      heading.focus({ preventScroll: true });
      window.scrollTo(0, 0);
    }
  }

  function route() {
    if (!getToken()) {
      showSignIn();
      return;
    }
    const match = JOB_HASH.exec(location.hash);
    if (match) {
      showJob(match[1]);
    } else if (location.hash === "#new") {
      showCompose();
    } else {
      showList();
    }
  }

  // ---- sign in and out ----

  function showSignIn(message) {
    stopList();
    closeJob();
    const error = $("sign-in-error");
    error.textContent = message || "";
    error.hidden = !message;
    $("token").setAttribute("aria-invalid", message ? "true" : "false");
    showView("signIn", "Sign in");
    $("token").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("token");
    const button = $("sign-in-button");
    const value = input.value.trim();
    if (!value) {
      showSignIn("Enter your API token.");
      return;
    }
    button.disabled = true;
    try {
      await api("/v1/jobs?limit=1", { token: value });
      setToken(value);
      input.value = "";
      input.setAttribute("aria-invalid", "false");
      $("sign-in-error").hidden = true;
      notify("");
      route();
    } catch (err) {
      input.value = "";
      if (err instanceof Unauthorized) {
        showSignIn("That token was not accepted (401). Check it and try again.");
      } else {
        showSignIn(`Could not sign in: ${err.message || "the service could not be reached"}.`);
      }
    } finally {
      button.disabled = false;
    }
  }

  function signOut(message) {
    clearToken();
    stopList();
    closeJob();
    list.items = [];
    list.next = null;
    $("status-filter").value = "";
    renderList();
    notify("");
    if (location.hash) history.replaceState(null, "", location.pathname);
    showSignIn(message);
  }

  // ---- the job list ----

  // generation: every load takes a new one, and only the newest answer is shown.
  const list = { items: [], next: null, generation: 0, timer: null, appending: false };
  const rowsById = new Map();

  function stopList() {
    clearTimeout(list.timer);
    list.timer = null;
    list.generation += 1; // answers still on their way are dropped
    list.appending = false;
    $("load-more").disabled = false;
  }

  function scheduleList() {
    clearTimeout(list.timer);
    list.timer = null;
    if (currentView === "list" && document.visibilityState === "visible") {
      // A refresh never overtakes a "Load more" still on its way.
      list.timer = setTimeout(() => (list.appending ? scheduleList() : loadList(false)),
        LIST_REFRESH_MS);
    }
  }

  function showList() {
    closeJob();
    showView("list", "Jobs");
    loadList(false);
  }

  async function loadList(append) {
    if (append && (!list.next || list.appending)) return;
    const params = new URLSearchParams();
    const status = $("status-filter").value;
    if (append) {
      params.set("limit", String(PAGE_SIZE));
      params.set("after", list.next);
    } else {
      params.set("limit", String(Math.min(LIST_MAX, Math.max(PAGE_SIZE, list.items.length))));
    }
    if (status) params.set("status", status);
    const generation = ++list.generation;
    list.appending = append;
    $("load-more").disabled = append;
    try {
      const page = await api(`/v1/jobs?${params}`);
      if (generation !== list.generation) return;
      if (append) {
        const known = new Set(list.items.map((job) => job.job_id));
        list.items = list.items.concat(page.items.filter((job) => !known.has(job.job_id)));
        list.next = page.next;
      } else if (list.items.length <= LIST_MAX) {
        list.items = page.items;
        list.next = page.next;
      } else {
        // More rows shown than one page holds: refresh the newest, keep the older ones.
        const fresh = new Set(page.items.map((job) => job.job_id));
        const older = list.items.slice(page.items.length).filter((job) => !fresh.has(job.job_id));
        list.items = page.items.concat(older);
      }
      renderList();
    } catch (err) {
      handleError(err, "load the jobs");
    } finally {
      if (generation === list.generation) {
        list.appending = false;
        $("load-more").disabled = false;
        scheduleList();
      }
    }
  }

  function makeRow(job) {
    const row = document.createElement("tr");
    row.className = "job-row";
    row.dataset.jobId = job.job_id;
    const link = document.createElement("a");
    link.href = `#job/${job.job_id}`;
    link.className = "job-link";
    link.title = job.job_id;
    link.setAttribute("aria-label", `Job ${job.job_id}`);
    const code = document.createElement("code");
    code.textContent = shortId(job.job_id);
    link.append(code);
    const label = document.createElement("span");
    label.className = "job-label";
    cell(row, "Job").append(link, label);
    const badge = document.createElement("span");
    badge.className = "badge";
    cell(row, "Status").append(badge);
    cell(row, "Total", "num");
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.setAttribute("aria-label", `Progress of job ${shortId(job.job_id)}`);
    const pct = document.createElement("span");
    pct.className = "num pct";
    cell(row, "Progress", "progress-cell").append(bar, pct);
    cell(row, "Created");
    cell(row, "Sent", "num");
    cell(row, "Failed", "num");
    return row;
  }

  // The job's sender as the page shows it: a Messenger page, or a WhatsApp number.
  function sender(job) {
    return job.channel === "whatsapp" ? `WhatsApp ${job.phone_number_id}` : `page ${job.page_id}`;
  }

  function updateRow(row, job) {
    const [jobCell, statusCell, totalCell, progressCell, createdCell, sentCell, failedCell] =
      row.cells;
    const name = job.metadata && typeof job.metadata.name === "string" ? job.metadata.name : "";
    jobCell.querySelector(".job-label").textContent =
      name ? `${name} · ${sender(job)}` : sender(job);
    sentCell.textContent = number(job.sent);
    failedCell.textContent = number(job.failed);
    setBadge(statusCell.firstElementChild, job.status);
    totalCell.textContent = number(job.total);
    progressCell.querySelector("progress").value = job.progress || 0;
    progressCell.querySelector(".pct").textContent = percent(job.progress);
    if (createdCell.dataset.iso !== job.created_at) {
      createdCell.dataset.iso = job.created_at || "";
      setTime(createdCell, job.created_at);
    }
  }

  function renderList() {
    const body = $("job-rows");
    const wanted = new Set(list.items.map((job) => job.job_id));
    for (const [id, row] of rowsById) {
      if (!wanted.has(id)) {
        row.remove();
        rowsById.delete(id);
      }
    }
    // Keyed, in place: rows keep their identity (and keyboard focus) across refreshes.
    let cursor = body.firstElementChild;
    for (const job of list.items) {
      let row = rowsById.get(job.job_id);
      if (!row) {
        row = makeRow(job);
        rowsById.set(job.job_id, row);
      }
      updateRow(row, job);
      if (row === cursor) {
        cursor = cursor.nextElementSibling;
      } else {
        body.insertBefore(row, cursor);
      }
    }
    $("list-empty").hidden = list.items.length > 0;
    $("list-empty").textContent = $("status-filter").value ? "No jobs with this status." :
      "No jobs yet.";
    $("job-table").hidden = list.items.length === 0;
    $("load-more").hidden = !list.next;
  }

  function onRowClick(event) {
    if (event.target.closest("a")) return; // the link navigates by itself
    const row = event.target.closest("tr.job-row");
    if (row) location.hash = `#job/${row.dataset.jobId}`;
  }

  function onFilterChange() {
    list.items = [];
    list.next = null;
    renderList();
    loadList(false);
  }

  // ---- one job, live ----

  const view = {
    id: null,
    job: null,
    controller: null,
    busy: false,
    lastAnnounce: 0,
    lastStatus: null,
    errorsShown: 0,
    errorsLoading: null, // the job whose errors are being fetched
    errorsLoadedAt: 0,
  };

  function closeJob() {
    if (view.controller) view.controller.abort();
    view.controller = null;
    view.id = null;
    view.job = null;
  }

  function resetJobView(id) {
    $("job-id").textContent = shortId(id);
    $("job-id").title = id;
    setBadge($("job-status"), "loading");
    $("job-reason").hidden = true;
    for (const key of ["sent", "failed", "skipped", "indoubt", "delivered", "read",
      "undelivered", "total", "rate", "eta"]) {
      $(`c-${key}`).textContent = "–";
    }
    for (const key of ["created", "started", "finished"]) $(`t-${key}`).textContent = "–";
    $("job-progress").value = 0;
    $("job-progress").setAttribute("aria-valuetext", "0%");
    $("job-percent").textContent = "0%";
    $("counters-live").textContent = "";
    $("live-state").textContent = "Connecting…";
    $("codes-rows").replaceChildren();
    $("codes-table").hidden = true;
    $("codes-empty").hidden = false;
    $("errors-rows").replaceChildren();
    $("errors-wrap").hidden = true;
    $("errors-empty").hidden = false;
    for (const id of ["pause-button", "resume-button", "cancel-button"]) $(id).disabled = true;
    Object.assign(view, {
      lastAnnounce: 0, lastStatus: null, errorsShown: 0, errorsLoadedAt: 0, chartFinal: false,
    });
    $("chart").replaceChildren();
    $("chart-summary").textContent = "No sends yet.";
    for (const key of ["sent", "failed", "skipped"]) $(`seg-${key}`).style.width = "0";
    $("job-meta").textContent = "";
  }

  function showJob(id) {
    stopList();
    if (view.id === id && view.controller) {
      showView("job", `Job ${shortId(id)}`);
      return;
    }
    closeJob();
    notify("");
    view.id = id;
    view.controller = new AbortController();
    resetJobView(id);
    showView("job", `Job ${shortId(id)}`);
    follow(id, view.controller.signal);
    loadErrors(id, view.controller.signal);
    chartLoop(id, view.controller.signal);
  }

  // ---- the chart: sent and failed per second (the last hour), or per minute if longer ----

  const SVG = "http://www.w3.org/2000/svg";
  const CHART_REFRESH_MS = 2000;

  async function chartLoop(id, signal) {
    while (!signal.aborted) {
      try {
        const series = await api(`/v1/jobs/${encodeURIComponent(id)}/series`, { signal });
        if (view.id === id) drawChart(series);
      } catch (err) {
        if (isAbort(err)) return;
      }
      if (view.job && ENDED.has(view.job.status) && view.job.finished_at) {
        if (view.chartFinal) return; // one more read after the end, then stop
        view.chartFinal = true;
      }
      await sleep(CHART_REFRESH_MS, signal);
    }
  }

  function drawChart(series) {
    const svg = $("chart");
    svg.replaceChildren();
    const seconds = series.seconds || [];
    const minutes = series.minutes || [];
    const span = seconds.length ? seconds[seconds.length - 1][0] - seconds[0][0] : 0;
    // Per second while the job's sending fits in the hour kept; per minute beyond it.
    const useMinutes = minutes.length > 60 || (!seconds.length && minutes.length > 0);
    const buckets = useMinutes ? minutes : seconds;
    if (!buckets.length) {
      $("chart-summary").textContent = "No sends yet.";
      return;
    }
    const step = useMinutes ? 60 : 1;
    const first = buckets[0][0];
    const last = buckets[buckets.length - 1][0];
    const slots = Math.max(1, Math.round((last - first) / step) + 1);
    const peak = Math.max(1, ...buckets.map((b) => b[1] + b[2]));
    const width = 600 / slots;
    for (const [at, sent, failed] of buckets) {
      const x = ((at - first) / step) * width;
      const sentH = (sent / peak) * 150;
      const failH = (failed / peak) * 150;
      for (const [h, y, cls] of [[sentH, 160 - sentH, "bar-sent"], [failH, 160 - sentH - failH, "bar-failed"]]) {
        if (h <= 0) continue;
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("x", String(x));
        rect.setAttribute("y", String(y));
        rect.setAttribute("width", String(Math.max(width - 0.5, 0.5)));
        rect.setAttribute("height", String(h));
        rect.setAttribute("class", cls);
        svg.append(rect);
      }
    }
    // Delivered and read (Meta's receipts, when counted per bucket) as lines over the bars.
    for (const [index, cls] of [[3, "line-delivered"], [4, "line-read"]]) {
      if (!buckets.some((b) => (b[index] || 0) > 0)) continue;
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", buckets.map((b) =>
        `${((b[0] - first) / step) * width + width / 2},${160 - ((b[index] || 0) / peak) * 150}`)
        .join(" "));
      line.setAttribute("class", cls);
      svg.append(line);
    }
    const unit = useMinutes ? "minute" : "second";
    const totalSent = buckets.reduce((n, b) => n + b[1], 0);
    const totalFailed = buckets.reduce((n, b) => n + b[2], 0);
    const totalDelivered = buckets.reduce((n, b) => n + (b[3] || 0), 0);
    const totalRead = buckets.reduce((n, b) => n + (b[4] || 0), 0);
    const receipts = totalDelivered || totalRead ?
      `; delivered ${totalDelivered.toLocaleString()} (blue line), read ` +
      `${totalRead.toLocaleString()} (dashed)` : "";
    $("chart-summary").textContent =
      `Per ${unit}, ${slots.toLocaleString()} ${unit}s shown (${duration(span)} of sending ` +
      `in the last hour): peak ${peak.toLocaleString()}/${unit}; sent ` +
      `${totalSent.toLocaleString()} (green), failed ${totalFailed.toLocaleString()} (red)` +
      `${receipts}.`;
  }

  // Why the page's sends are held right now (the job view's page_hold).
  const HOLDS = {
    provider_outage: "The provider is failing for this page: held and probed, it resumes by itself.",
    page_restricted: "Meta restricted this page (10/1893063): resume a job of the page once lifted.",
  };

  function renderJob(job) {
    if (job.job_id !== view.id) return;
    view.job = job;
    setBadge($("job-status"), job.status);
    const jobName = job.metadata && typeof job.metadata.name === "string" ? job.metadata.name : "";
    $("job-meta").textContent = [jobName, sender(job), job.message_kind]
      .filter(Boolean).join(" · ");
    const reason = $("job-reason");
    const held = HOLDS[job.page_hold] || "";
    const why = [job.reason ? `Reason: ${job.reason}` : "", held].filter(Boolean).join(" · ");
    reason.textContent = why;
    reason.hidden = !why;
    $("c-sent").textContent = number(job.sent);
    $("c-failed").textContent = number(job.failed);
    $("c-skipped").textContent = number(job.skipped);
    $("c-indoubt").textContent = number(job.indoubt);
    $("c-delivered").textContent = number(job.delivered || 0);
    $("c-read").textContent = number(job.read || 0);
    // WhatsApp only: Meta accepted the send, then a status webhook said it failed.
    $("c-undelivered").textContent = number(job.undelivered || 0);
    $("c-undelivered-box").hidden = job.channel !== "whatsapp";
    $("c-total").textContent = number(job.total);
    $("c-rate").textContent = typeof job.rate_per_s === "number" ?
      `${job.rate_per_s.toLocaleString()}/s` : "–";
    $("c-eta").textContent = ENDED.has(job.status) ? "done" :
      job.status === "paused" ? "paused" : duration(job.eta_s);
    $("job-progress").value = job.progress || 0;
    $("job-progress").setAttribute("aria-valuetext", percent(job.progress));
    $("job-percent").textContent = percent(job.progress);
    // The bar by outcome: a cancelled job shows what it never reached (CSSOM, not markup:
    // the page's policy allows no inline style attributes).
    for (const key of ["sent", "failed", "skipped"]) {
      const share = job.total ? (job[key] / job.total) * 100 : 0;
      $(`seg-${key}`).style.width = `${share}%`;
    }
    setTime($("t-created"), job.created_at);
    setTime($("t-started"), job.started_at);
    setTime($("t-finished"), job.finished_at);
    // Skipped recipients carry their reason (window_closed, suppressed, cancelled) beside the
    // provider's codes of the failed ones.
    const skips = Object.entries(job.skipped_reasons || {}).map(([k, n]) => [`skipped: ${k}`, n]);
    renderCodes({ ...(job.error_codes || {}), ...Object.fromEntries(skips) });
    renderControls();
    announce(job);
    const due = Date.now() - view.errorsLoadedAt >= ERRORS_REFRESH_MS;
    if (due && job.failed > view.errorsShown && view.errorsShown < ERRORS_SHOWN) {
      loadErrors(job.job_id, view.controller && view.controller.signal);
    }
  }

  function announce(job) {
    const now = Date.now();
    const changed = job.status !== view.lastStatus;
    if (!changed && now - view.lastAnnounce < ANNOUNCE_EVERY_MS) return;
    view.lastStatus = job.status;
    view.lastAnnounce = now;
    $("counters-live").textContent = `Job ${job.status}: ${number(job.sent)} sent, ` +
      `${number(job.failed)} failed, ${number(job.skipped)} skipped of ${number(job.total)}.`;
  }

  function renderCodes(codes) {
    const entries = Object.entries(codes).sort((a, b) => b[1] - a[1]);
    const body = $("codes-rows");
    body.replaceChildren();
    for (const [code, count] of entries) {
      const row = body.insertRow();
      cell(row, "Code").textContent = code;
      cell(row, "Recipients", "num").textContent = number(count);
    }
    $("codes-table").hidden = entries.length === 0;
    $("codes-empty").hidden = entries.length > 0;
  }

  function renderControls() {
    const status = view.job ? view.job.status : null;
    $("pause-button").disabled = view.busy || !CAN_PAUSE.has(status);
    $("resume-button").disabled = view.busy || status !== "paused";
    $("cancel-button").disabled = view.busy || !status || ENDED.has(status);
  }

  async function loadErrors(id, signal) {
    if (view.errorsLoading === id) return;
    view.errorsLoading = id;
    view.errorsLoadedAt = Date.now();
    try {
      const page = await api(`/v1/jobs/${encodeURIComponent(id)}/errors?limit=${ERRORS_SHOWN}`,
        { signal });
      if (id !== view.id) return;
      const body = $("errors-rows");
      body.replaceChildren();
      for (const item of page.items) {
        const row = body.insertRow();
        cell(row, "Recipient").textContent = item.recipient;
        cell(row, "Code").textContent = item.code;
        cell(row, "Subcode").textContent = item.subcode || "–";
        cell(row, "Message", "message").textContent = item.message;
        cell(row, "Attempts", "num").textContent = String(item.attempts);
      }
      view.errorsShown = page.items.length;
      $("errors-wrap").hidden = page.items.length === 0;
      $("errors-empty").hidden = page.items.length > 0;
    } catch (err) {
      handleError(err, "load the errors");
    } finally {
      if (view.errorsLoading === id) view.errorsLoading = null;
    }
  }

  async function control(action) {
    const id = view.id;
    const signal = view.controller && view.controller.signal;
    view.busy = true;
    renderControls();
    try {
      const job = await api(`/v1/jobs/${encodeURIComponent(id)}/${action}`,
        { method: "POST", signal });
      renderJob(job);
      const done = { pause: "Paused", resume: "Resumed", cancel: "Cancelled" }[action];
      notify(`${done}: job ${shortId(id)} is now ${job.status}.`);
    } catch (err) {
      if (err instanceof ApiFailure && err.status === 409) {
        notify(`Could not ${action}: ${err.message}.`, "error");
      } else {
        handleError(err, `${action} the job`);
      }
    } finally {
      view.busy = false;
      renderControls();
    }
  }

  function askCancel() {
    const dialog = $("confirm-cancel");
    dialog.returnValue = "";
    dialog.showModal();
  }

  function onConfirmClose() {
    if ($("confirm-cancel").returnValue === "cancel" && view.id) control("cancel");
  }

  // ---- Server-Sent Events over fetch ----

  // Parses the text/event-stream format (WHATWG HTML, "Server-sent events"): fields up to a
  // blank line make one event; lines starting with ":" are comments (keep-alives).
  function sseParser(onEvent) {
    let buffer = "";
    let type = "";
    let data = [];
    function line(text) {
      if (text === "") {
        if (data.length) onEvent(type || "message", data.join("\n"));
        type = "";
        data = [];
        return;
      }
      if (text.startsWith(":")) return;
      const colon = text.indexOf(":");
      const field = colon < 0 ? text : text.slice(0, colon);
      let value = colon < 0 ? "" : text.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    return (chunk) => {
      buffer += chunk;
      for (;;) {
        const at = buffer.search(/[\r\n]/);
        if (at < 0) return;
        if (buffer[at] === "\r" && at === buffer.length - 1) return; // "\r\n" split in two
        const next = buffer[at] === "\r" && buffer[at + 1] === "\n" ? at + 2 : at + 1;
        line(buffer.slice(0, at));
        buffer = buffer.slice(next);
      }
    };
  }

  async function follow(id, signal) {
    let wait = RETRY_FIRST_MS;
    while (!signal.aborted) {
      let finished = false;
      try {
        const response = await fetch(`/v1/jobs/${encodeURIComponent(id)}/events`, {
          signal,
          cache: "no-store",
          credentials: "omit",
          headers: { Authorization: `Bearer ${getToken() || ""}`, Accept: "text/event-stream" },
        });
        if (response.status === 401) throw new Unauthorized("token refused");
        if (response.status === 404) {
          setBadge($("job-status"), "not found");
          $("live-state").textContent = "";
          notify("No such job: it may have been deleted, or belong to another tenant.", "error");
          return;
        }
        if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
        $("live-state").textContent = "Live.";
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        const parse = sseParser((type, data) => {
          if (type === "job" || type === "end") {
            renderJob(JSON.parse(data));
            wait = RETRY_FIRST_MS; // a working stream resets the backoff
          }
          if (type === "end" || type === "gone") finished = type;
        });
        while (!finished) {
          const { value, done } = await reader.read();
          if (done) break;
          parse(decoder.decode(value, { stream: true }));
        }
        if (finished) {
          reader.cancel().catch(() => {});
          if (finished === "gone") {
            notify("This job no longer exists (it ended and was deleted).", "error");
            $("live-state").textContent = "";
          } else {
            await settle(id, signal);
          }
          return;
        }
      } catch (err) {
        if (signal.aborted || isAbort(err)) return;
        if (err instanceof Unauthorized) {
          handleError(err, "follow the job");
          return;
        }
      }
      // The stream broke or closed early: try again, waiting longer each time.
      const delay = Math.round(wait * (0.5 + Math.random() / 2));
      $("live-state").textContent = `Connection lost; reconnecting in ${duration(delay / 1000)}…`;
      await sleep(delay, signal);
      wait = Math.min(wait * 2, RETRY_MOST_MS);
    }
  }

  // A stopped job ends (status cancelled or failed) before its last in-flight chunk is
  // recorded; its counters are final once finished_at is set. Poll briefly until then.
  async function settle(id, signal) {
    $("live-state").textContent = "Finishing…";
    for (let tries = 0; tries < 60 && !(view.job && view.job.finished_at); tries += 1) {
      await sleep(500, signal);
      if (signal.aborted) return;
      try {
        renderJob(await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal }));
      } catch (err) {
        handleError(err, "load the job");
        return;
      }
    }
    if (signal.aborted) return;
    $("live-state").textContent = "Final.";
    loadErrors(id, signal);
    watchReceipts(id, signal);
  }

  // Meta's delivery and read receipts keep coming after the last send: refresh the
  // delivered / read counts for a while after the job ended.
  async function watchReceipts(id, signal) {
    for (let tries = 0; tries < 60; tries += 1) {
      await sleep(2000, signal);
      if (signal.aborted) return;
      try {
        renderJob(await api(`/v1/jobs/${encodeURIComponent(id)}`, { signal }));
      } catch (err) {
        return; // the page's other calls report errors; this one only refreshes
      }
    }
  }

  // ---- wiring ----


  // ---- compose a job: pages, recipients, message, preview, test send, send ----

  const PREVIEW_ROWS = 3;
  const CSV_PEEK_BYTES = 64 * 1024;
  const PLACEHOLDER = /\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\|([^{}]*))?\}\}/g;
  const CHECK_MOST = 10000; // the API checks up to this many recipients
  const compose = { rows: [], ids: [], columns: [], pagesLoaded: false, busy: false };

  async function showCompose() {
    stopList();
    closeJob();
    showView("compose", "New job");
    if (!compose.pagesLoaded) {
      try {
        const pages = await api("/v1/pages");
        const select = $("f-page");
        select.replaceChildren();
        for (const page of pages.items) {
          const option = document.createElement("option");
          option.value = page.page_id;
          option.textContent = page.page_id;
          select.append(option);
        }
        compose.pagesLoaded = true;
      } catch (err) {
        handleError(err, "load your pages");
      }
    }
    renderPreview();
  }

  // RFC 4180: quoted fields, doubled quotes, CRLF or LF.
  function parseCsv(text) {
    const rows = [];
    let row = [];
    let field = "";
    let quoted = false;
    for (let i = 0; i < text.length; i += 1) {
      const c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') {
          field += '"';
          i += 1;
        } else if (c === '"') {
          quoted = false;
        } else {
          field += c;
        }
      } else if (c === '"') {
        quoted = true;
      } else if (c === ",") {
        row.push(field);
        field = "";
      } else if (c === "\n" || c === "\r") {
        if (c === "\r" && text[i + 1] === "\n") i += 1;
        row.push(field);
        rows.push(row);
        row = [];
        field = "";
      } else {
        field += c;
      }
    }
    if (field || row.length) {
      row.push(field);
      rows.push(row);
    }
    return rows;
  }

  async function onCsvChosen() {
    const file = $("f-csv").files[0];
    compose.rows = [];
    compose.ids = [];
    compose.columns = [];
    if (file) {
      const text = (await file.slice(0, CSV_PEEK_BYTES).text()).replace(/^\uFEFF/, "");
      const rows = parseCsv(text);
      if (file.size > CSV_PEEK_BYTES) rows.pop(); // the last line may be cut
      const header = (rows.shift() || []).map((h) => h.trim());
      compose.columns = header;
      compose.rows = rows.slice(0, PREVIEW_ROWS).map((r) =>
        Object.fromEntries(header.map((h, i) => [h, (r[i] || "").trim()])));
      const idAt = header.indexOf("id");
      if (idAt >= 0) {
        compose.ids = rows.map((r) => (r[idAt] || "").trim()).filter(Boolean)
          .slice(0, CHECK_MOST);
      }
    }
    const vars = compose.columns.filter((c) => c && c !== "id");
    $("f-columns").textContent = vars.length ?
      `Placeholders: ${vars.map((v) => `{{${v}}}`).join(", ")}` :
      "Placeholders: none yet.";
    renderPreview();
  }

  function fill(template, values) {
    return (template || "").replace(PLACEHOLDER, (_, name, fallback) => {
      const value = values[name];
      if (value) return value;
      return fallback !== undefined ? fallback.trim() : "";
    });
  }

  function value(id) {
    return $(id).value.trim();
  }

  function splitList(text) {
    return text.split(",").map((part) => part.trim()).filter(Boolean);
  }

  function buildMessage() {
    const kind = $("f-kind").value;
    if (kind === "text") {
      const message = { text: $("f-text").value };
      const quick = splitList($("f-quick").value);
      if (quick.length) {
        message.quick_replies = quick.map((title) => ({
          content_type: "text", title, payload: title,
        }));
      }
      return message;
    }
    if (kind === "utility") {
      const template = { name: value("f-tname"), language: { code: value("f-tlang") } };
      const params = splitList($("f-tparams").value);
      if (params.length) {
        template.components = [
          { type: "body", parameters: params.map((text) => ({ type: "text", text })) },
        ];
      }
      return { template };
    }
    const element = { title: value("f-title") };
    if (value("f-subtitle")) element.subtitle = value("f-subtitle");
    if (value("f-image")) element.image_url = value("f-image");
    const buttons = [];
    for (const n of [1, 2, 3]) {
      const title = value(`f-b${n}-title`);
      const url = value(`f-b${n}-url`);
      if (title || url) buttons.push({ type: "web_url", title, url });
    }
    if (buttons.length) element.buttons = buttons;
    return {
      attachment: { type: "template", payload: { template_type: "generic", elements: [element] } },
    };
  }

  function buildSpec() {
    const lane = $("f-lane").value;
    const spec = {
      page_id: $("f-page").value,
      message: buildMessage(),
      messaging_type: lane === "HUMAN_AGENT" ? "MESSAGE_TAG" : lane,
    };
    if (lane === "HUMAN_AGENT") spec.tag = "HUMAN_AGENT";
    if (value("f-name")) spec.metadata = { name: value("f-name") };
    if ($("f-later").checked) {
      const when = $("f-when").value;
      // datetime-local is the user's own clock: sent with its offset, as the API needs.
      spec.send_at = when ? new Date(when).toISOString() : "";
    }
    return spec;
  }

  function renderPreview() {
    const list = $("preview");
    list.replaceChildren();
    const rows = compose.rows.length ? compose.rows :
      value("f-psids").split(/\s+/).filter(Boolean).slice(0, PREVIEW_ROWS).map((id) => ({ id }));
    const shown = rows.length ? rows : [{ id: "" }];
    const message = buildMessage();
    for (const row of shown) {
      const item = document.createElement("li");
      const to = document.createElement("p");
      to.className = "preview-to";
      to.textContent = row.id ? `To ${row.id}` : "To each recipient";
      item.append(to);
      if (message.text !== undefined) {
        const bubble = document.createElement("p");
        bubble.className = "bubble";
        bubble.textContent = fill(message.text, row) || "…";
        item.append(bubble);
        if (message.quick_replies) {
          const replies = document.createElement("p");
          replies.className = "quick-replies";
          for (const reply of message.quick_replies) {
            const chip = document.createElement("span");
            chip.className = "chip";
            chip.textContent = fill(reply.title, row);
            replies.append(chip);
          }
          item.append(replies);
        }
      } else if (message.template) {
        // Meta renders an approved template from its own text: what we know is its name and
        // the parameters each person gets.
        const bubble = document.createElement("p");
        bubble.className = "bubble";
        const params = (message.template.components || [])
          .flatMap((c) => c.parameters.map((p) => fill(p.text, row)));
        bubble.textContent = `Template ${message.template.name || "…"} ` +
          `(${message.template.language.code})` + (params.length ? `: ${params.join(", ")}` : "");
        item.append(bubble);
      } else {
        const element = message.attachment.payload.elements[0];
        const card = document.createElement("div");
        card.className = "msg-card";
        if (element.image_url) {
          // The page's policy loads no outside images: a frame says where it comes from.
          const image = document.createElement("div");
          image.className = "msg-image";
          let host = element.image_url;
          try {
            host = new URL(fill(element.image_url, row)).host;
          } catch {
            host = "an invalid URL";
          }
          image.textContent = `Image from ${host}`;
          card.append(image);
        }
        const title = document.createElement("p");
        title.className = "msg-title";
        title.textContent = fill(element.title, row) || "…";
        card.append(title);
        if (element.subtitle) {
          const sub = document.createElement("p");
          sub.className = "msg-subtitle";
          sub.textContent = fill(element.subtitle, row);
          card.append(sub);
        }
        for (const button of element.buttons || []) {
          const b = document.createElement("p");
          b.className = "msg-button";
          b.textContent = fill(button.title, row) || "…";
          card.append(b);
        }
        item.append(card);
      }
      list.append(item);
    }
  }

  const FIELD_ERRORS = ["page", "name", "recipients", "text", "quick", "tname", "tlang",
    "tparams", "title", "subtitle", "image",
    "b1-title", "b1-url", "b2-title", "b2-url", "b3-title", "b3-url", "lane", "when", "test"];

  function clearComposeErrors() {
    for (const key of FIELD_ERRORS) {
      const box = $(`err-${key}`);
      box.hidden = true;
      box.textContent = "";
      const input = document.querySelector(`[aria-describedby~="err-${key}"]`);
      if (input) input.removeAttribute("aria-invalid");
    }
    $("compose-error").hidden = true;
  }

  // Where the API's error goes: next to the field its path names, else above the form.
  function errorTarget(field) {
    if (!field) return null;
    const path = field.replace(/^spec\./, "");
    const button = /buttons\[(\d)\]\.(title|url)$/.exec(path);
    if (button) return `b${Number(button[1]) + 1}-${button[2]}`;
    if (path.includes("quick_replies")) return "quick";
    if (path.startsWith("message.template.name")) return "tname";
    if (path.startsWith("message.template.language")) return "tlang";
    if (path.startsWith("message.template")) return "tparams";
    if (/subtitle$/.test(path)) return "subtitle";
    if (/image_url$/.test(path)) return "image";
    if (path.startsWith("message")) {
      return { text: "text", card: "title", utility: "tname" }[$("f-kind").value];
    }
    if (path === "page_id") return "page";
    if (path.startsWith("test_recipients")) return "test";
    if (path.startsWith("recipients")) return "recipients";
    if (path === "send_at") return "when";
    if (path === "metadata") return "name";
    if (path === "messaging_type" || path === "tag") return "lane";
    return null;
  }

  function showComposeError(err, what) {
    if (!(err instanceof ApiFailure)) {
      handleError(err, what);
      return;
    }
    const key = errorTarget(err.field);
    if (key) {
      const box = $(`err-${key}`);
      box.textContent = err.message;
      box.hidden = false;
      const input = document.querySelector(`[aria-describedby~="err-${key}"]`);
      if (input) {
        input.setAttribute("aria-invalid", "true");
        input.focus();
      }
    } else {
      $("compose-error").textContent = `Could not ${what}: ${err.message}`;
      $("compose-error").hidden = false;
    }
  }

  function localError(key, message) {
    const failure = new ApiFailure(0, "invalid_field", message);
    failure.field = key;
    return failure;
  }

  async function onSendTest() {
    clearComposeErrors();
    const psid = value("f-test");
    $("test-result").textContent = "";
    if (!psid) {
      showComposeError(localError("test_recipients", "Enter the PSID to send the test to."),
        "send the test");
      return;
    }
    const first = compose.rows[0] || {};
    const variables = Object.fromEntries(Object.entries(first).filter(([k]) => k !== "id"));
    const spec = buildSpec();
    delete spec.send_at;
    try {
      const answer = await api("/v1/jobs", {
        method: "POST",
        json: { ...spec, test_recipients: [psid], test_variables: variables },
      });
      $("test-result").textContent = answer.results.map((r) => (r.outcome === "sent" ?
        `Test sent to ${r.recipient}.` :
        `Test to ${r.recipient} failed: ${[r.code, r.subcode].filter(Boolean).join("/")} ` +
          `${r.message || ""}`)).join(" ");
    } catch (err) {
      showComposeError(err, "send the test");
    }
  }

  async function onSubmitJob(event) {
    event.preventDefault();
    if (compose.busy) return;
    clearComposeErrors();
    const spec = buildSpec();
    const file = $("f-csv").files[0];
    const psids = value("f-psids").split(/\s+/).filter(Boolean);
    let options;
    if (file) {
      const form = new FormData();
      form.append("spec", JSON.stringify(spec));
      form.append("recipients", file, file.name);
      options = { method: "POST", form };
    } else if (psids.length) {
      options = { method: "POST", json: { ...spec, recipients: psids } };
    } else {
      showComposeError(localError("recipients", "Choose a CSV file or paste PSIDs."),
        "send the job");
      return;
    }
    compose.busy = true;
    $("send-button").disabled = true;
    try {
      const accepted = await api("/v1/jobs", options);
      location.hash = `#job/${accepted.job_id}`;
    } catch (err) {
      showComposeError(err, "send the job");
    } finally {
      compose.busy = false;
      $("send-button").disabled = false;
    }
  }

  async function onRunChecks() {
    clearComposeErrors();
    const file = $("f-csv").files[0];
    const ids = file ? compose.ids :
      value("f-psids").split(/\s+/).filter(Boolean).slice(0, CHECK_MOST);
    if (!ids.length) {
      showComposeError(localError("recipients", "Choose a CSV file or paste PSIDs."),
        "run the checks");
      return;
    }
    const spec = buildSpec();
    delete spec.send_at;
    try {
      const c = await api("/v1/checks", { method: "POST", json: { ...spec, recipients: ids } });
      const first = file ? `the first ${c.checked.toLocaleString()} of the CSV` :
        `${c.checked.toLocaleString()}`;
      const rule = c.window_rule === "require" ? "enforced" : "not enforced";
      $("check-result").textContent =
        `Checked ${first} recipients: ${c.outside_window.toLocaleString()} outside the ` +
        `24-hour window (window ${rule}), ${c.suppressed.toLocaleString()} suppressed; ` +
        `${c.would_skip.toLocaleString()} would be skipped. ` +
        (c.notes.length ? `Notes: ${c.notes.join("; ")}.` : "Every rule passes.");
    } catch (err) {
      showComposeError(err, "run the checks");
    }
  }

  function onKindChange() {
    const kind = $("f-kind").value;
    $("card-fields").hidden = kind !== "card";
    $("text-fields").hidden = kind !== "text";
    $("utility-fields").hidden = kind !== "utility";
    // A utility template goes in its own lane; the others never do.
    if (kind === "utility") $("f-lane").value = "UTILITY";
    else if ($("f-lane").value === "UTILITY") $("f-lane").value = "UPDATE";
    renderPreview();
  }

  function onWhenChange() {
    const later = $("f-later").checked;
    $("f-when").disabled = !later;
    $("send-button").textContent = later ? "Schedule" : "Send now";
  }

  $("compose-form").addEventListener("submit", onSubmitJob);
  $("compose-form").addEventListener("input", renderPreview);
  $("f-csv").addEventListener("change", onCsvChosen);
  $("f-kind").addEventListener("change", onKindChange);
  $("f-now").addEventListener("change", onWhenChange);
  $("f-later").addEventListener("change", onWhenChange);
  $("test-button").addEventListener("click", onSendTest);
  $("check-button").addEventListener("click", onRunChecks);

  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  $("status-filter").addEventListener("change", onFilterChange);
  $("load-more").addEventListener("click", () => loadList(true));
  $("job-rows").addEventListener("click", onRowClick);
  $("pause-button").addEventListener("click", () => control("pause"));
  $("resume-button").addEventListener("click", () => control("resume"));
  $("cancel-button").addEventListener("click", askCancel);
  $("confirm-cancel").addEventListener("close", onConfirmClose);
  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (currentView !== "list") return;
    if (document.visibilityState === "visible") loadList(false);
    else stopList();
  });
  route();
})();
