// phasebus console: reads the API, listens to the bus on /events, draws nothing itself
// but text: the state machines are SVG drawn by the server. No library, no build step.
"use strict";

(() => {
  const $ = (selector, root = document) => root.querySelector(selector);
  const EVENTS = [
    "task_started", "progress", "task_end", "error", "schedule_fired",
    "message-listener-connected", "message-listener-disconnected",
    "workflow-updated", "workflow-deleted", "job-updated", "job-deleted",
  ];
  const MARKS = {
    current: "▶ now", done: "✓ done", error: "✗ error", timed_out: "◔ timed out",
    released: "↩ released", stopped: "■ stopped", stalled: "⚠ stalled",
  };
  const OUTCOME_MARKS = {
    done: "✓ done", failed: "✗ failed", stopped: "■ stopped", replaced: "■ replaced",
  };

  const state = {
    token: null, // held in memory only: never stored, never in a URL
    expiry: null,
    socket: null,
    retry: 500,
    workflows: new Map(), // id -> {summary, declaration}
    tasks: new Map(), // running tasks by id
    finished: new Map(), // finished tasks seen, by id
    diagrams: new Map(), // workflow id -> Promise of SVG text
    refreshing: new Map(), // task id -> timer
    signedOut: false,
  };

  // ---------------------------------------------------------------- helpers

  function el(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  const time = (iso) => (iso ? new Date(iso) : null);
  const clock = (iso) => (iso ? time(iso).toLocaleTimeString([], { hour12: false }) : "–");
  const stamp = (iso) => (iso ? time(iso).toLocaleString([], { hour12: false }) : "–");

  function seconds(value) {
    if (value === null || value === undefined) return "–";
    if (value < 1) return `${Math.round(value * 1000)} ms`;
    if (value < 120) return `${value.toFixed(value < 10 ? 2 : 1)} s`;
    return `${Math.floor(value / 60)} min ${Math.round(value % 60)} s`;
  }

  function ago(iso) {
    if (!iso) return "never";
    const delta = (Date.now() - time(iso).getTime()) / 1000;
    return delta < 1 ? "just now" : `${seconds(delta)} ago`;
  }

  function badge(kind, text) {
    return el("span", { class: `badge ${kind}` }, text || MARKS[kind] || kind);
  }

  function setStatus(text, up) {
    const node = $("#connection");
    node.textContent = text;
    node.classList.toggle("up", up === true);
    node.classList.toggle("down", up === false);
  }

  function stepEnd(step) {
    if (step.ended) return step.ended;
    if (step.timed_out) return "timed_out";
    if (step.errors && step.errors.length) return "error";
    return "done";
  }

  function hasErrors(task) {
    if (typeof task.has_errors === "boolean") return task.has_errors;
    return (task.errors || []).length > 0 || (task.steps || []).some((s) => (s.errors || []).length);
  }

  // ---------------------------------------------------------------- the API

  class Unauthorized extends Error {}

  async function api(path, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const response = await fetch(path, { ...options, headers, cache: "no-store" });
    if (response.status === 401) {
      signOut(state.token ? "Your sign-in has expired: sign in again." : "");
      throw new Unauthorized("unauthorized");
    }
    return response;
  }

  async function json(path, options) {
    const response = await api(path, options);
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const problems = body && body.problems && body.problems.length ? `: ${body.problems.join("; ")}` : "";
      throw new Error(`${(body && body.error) || response.statusText}${problems}`);
    }
    return body;
  }

  // ---------------------------------------------------------------- sign-in

  function showOnly(id) {
    for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${id}`;
    for (const link of document.querySelectorAll("#nav a")) {
      const target = link.getAttribute("href").slice(1);
      if (target === id || (id === "task" && target === "live")) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  function signOut(message) {
    state.token = null;
    state.signedOut = true;
    clearTimeout(state.expiry);
    if (state.socket) state.socket.close(1000, "signed out");
    state.socket = null;
    state.tasks.clear();
    state.finished.clear();
    state.workflows.clear();
    state.diagrams.clear();
    for (const id of ["#live-tasks", "#history-list", "#workflow-list", "#schedules", "#task-diagram",
      "#task-timeline", "#task-log", "#task-step", "#subscribers tbody", "#listeners tbody"]) {
      $(id).replaceChildren();
    }
    $("#nav").hidden = true;
    $("#sign-out").hidden = true;
    $("#sign-in-error").textContent = message || "";
    setStatus("signed out", false);
    showOnly("sign-in");
    $("#psk").focus();
  }

  function sessionLength() {
    // /ui/?session=SECONDS asks for a sign-in shorter than the server's longest
    const asked = Number(new URLSearchParams(location.search).get("session"));
    return asked > 0 ? { expires_in: asked } : {};
  }

  async function signIn(event) {
    event.preventDefault();
    const input = $("#psk");
    const button = $("#sign-in-form button");
    button.disabled = true;
    $("#sign-in-error").textContent = "";
    try {
      const response = await fetch("/ui/sign-in", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ psk: input.value, ...sessionLength() }),
        cache: "no-store",
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        $("#sign-in-error").textContent = body.error || `sign-in failed (${response.status})`;
        input.select();
        return;
      }
      input.value = ""; // the key is not kept
      state.token = body.token;
      state.signedOut = false;
      const left = body.expires_at * 1000 - Date.now();
      state.expiry = setTimeout(() => signOut("Your sign-in has expired: sign in again."), Math.max(left, 1000));
      $("#sign-out").hidden = false;
      await start();
    } catch (error) {
      $("#sign-in-error").textContent = `sign-in failed: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  }

  // ---------------------------------------------------------------- the bus

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}/events?show=${EVENTS.join(",")}`;
    // A browser cannot set headers on a WebSocket: the token travels as a subprotocol.
    const socket = state.token
      ? new WebSocket(url, ["phasebus.console", `phasebus.token.${state.token}`])
      : new WebSocket(url);
    state.socket = socket;
    let opened = false;
    socket.addEventListener("open", () => {
      opened = true;
      state.retry = 500;
      setStatus("live", true);
      // anything missed while away
      loadTasks().catch(report);
    });
    socket.addEventListener("message", (message) => {
      try {
        onEvent(JSON.parse(message.data));
      } catch (error) {
        report(error);
      }
    });
    socket.addEventListener("close", () => {
      if (state.socket !== socket || state.signedOut) return;
      setStatus("disconnected: reconnecting…", false);
      const wait = state.retry;
      state.retry = Math.min(state.retry * 2, 8000);
      setTimeout(async () => {
        if (state.socket !== socket || state.signedOut) return;
        if (!opened) {
          // refused: find out whether the token is still good (a 401 signs out)
          try { await api("/workflows"); } catch (error) { return; }
        }
        connect();
      }, wait);
    });
  }

  function onEvent(message) {
    const data = message.data || {};
    switch (message.message_type) {
      case "task_started":
        refreshTask(data.task_id, 0);
        break;
      case "progress":
        refreshTask(data.task, 120);
        break;
      case "error":
        refreshTask(data.task, 120);
        break;
      case "task_end":
        refreshTask(data.task_id, 0);
        break;
      case "message-listener-connected":
      case "message-listener-disconnected":
        busLog(message.message_type, data);
        if (!$("#view-bus").hidden) loadBus().catch(report);
        break;
      case "workflow-updated":
      case "workflow-deleted":
      case "job-updated":
      case "job-deleted":
        // a definition changed at run time: draw it anew
        state.diagrams.delete(data.id);
        for (const holder of document.querySelectorAll(".diagram")) {
          if (holder.dataset.workflow === data.id) delete holder.dataset.workflow;
        }
        loadWorkflows().catch(report);
        break;
      case "schedule_fired":
        if (!$("#view-bus").hidden || !$("#view-workflows").hidden) loadWorkflows().catch(report);
        break;
      default:
    }
  }

  function refreshTask(id, delay) {
    if (!id) return;
    if (state.refreshing.has(id)) {
      if (delay > 0) return; // one refresh is coming: it will see this change too
      clearTimeout(state.refreshing.get(id)); // a start or an end is shown at once
    }
    state.refreshing.set(id, setTimeout(async () => {
      state.refreshing.delete(id);
      try {
        const response = await api(`/task/${encodeURIComponent(id)}`);
        if (response.status === 404) return;
        const task = await response.json();
        const seen = state.tasks.get(id);
        // of two answers about a running task, the one about the later step wins
        if (task.running && seen && (seen.steps || []).length > (task.steps || []).length) return;
        taskChanged(task);
      } catch (error) {
        report(error);
      }
    }, delay));
  }

  function taskChanged(task) {
    // an answer that left before the task ended may arrive after: an ended task stays ended
    if (task.running && state.finished.has(task.id)) return;
    if (task.running) {
      state.tasks.set(task.id, task);
    } else {
      state.tasks.delete(task.id);
      const isNew = !state.finished.has(task.id);
      state.finished.set(task.id, task);
      if (isNew && historyLoaded && matchesFilters(task)) {
        $("#history-list").prepend(historyItem(task));
        $("#history-empty").hidden = true;
      }
    }
    renderLive();
    if (currentTask === task.id) renderTask(task);
  }

  function busLog(type, data) {
    const list = $("#bus-log");
    const first = list.querySelector(".empty");
    if (first) first.remove();
    const connected = type === "message-listener-connected";
    const channels = data.channels ? data.channels.join(", ") : "every message type";
    list.prepend(el("li", {},
      `${new Date().toLocaleTimeString([], { hour12: false })} `,
      badge(connected ? "done" : "stopped", connected ? "⇄ connected" : "✕ disconnected"),
      ` ${data.subscriber_id} (${channels})`));
    while (list.children.length > 50) list.lastChild.remove();
  }

  // ---------------------------------------------------------------- running tasks

  function workflowName(id) {
    const entry = state.workflows.get(id);
    return entry ? entry.summary.name || id : id;
  }

  function phaseOf(workflowId, stepName) {
    const entry = state.workflows.get(workflowId);
    const steps = entry && entry.declaration ? entry.declaration.steps : [];
    const step = steps.find((s) => s.name === stepName);
    return step && step.phase ? step.phase : null;
  }

  function stepDetails(task) {
    const step = task.step;
    if (!step) {
      return el("p", { class: "empty" },
        task.state === "queued" ? "queued: starts when the active run ends" : "between steps");
    }
    const parts = [];
    const facts = el("dl", { class: "facts" });
    const phase = phaseOf(task.workflow, step.name);
    const entry = state.workflows.get(task.workflow);
    const names = entry && entry.declaration ? entry.declaration.steps.map((s) => s.name) : [];
    const place = names.includes(step.name) ? ` (${names.indexOf(step.name) + 1} of ${names.length})` : "";
    facts.append(el("dt", {}, "Step"), el("dd", {}, phase ? `${phase} › ${step.name}` : step.name, place, " ",
      badge("current"), step.stalled ? badge("stalled") : null,
      (step.released || []).length ? badge("released") : null));
    facts.append(el("dt", {}, "Action"), el("dd", {}, `${step.action} ${step.message_type}`));
    facts.append(el("dt", {}, "Step began"), el("dd", {}, clock(step.started_at)));
    facts.append(el("dt", {}, "Deadline"), el("dd", {},
      el("span", { class: "deadline", "data-deadline": step.deadline || "" }, deadlineText(step.deadline))));
    parts.push(facts);
    const owed = step.waiting_for || [];
    const answered = Object.entries(step.answered || {});
    const released = step.released || [];
    if (owed.length || answered.length || released.length) {
      const list = el("ul", { class: "owed", "aria-label": "Listeners of this step" });
      for (const id of owed) {
        list.append(el("li", {}, badge("current", "◌ owed"), ` ${id} — last heard `,
          el("span", { "data-heard": (step.last_heard || {})[id] || "" }, ago((step.last_heard || {})[id]))));
      }
      for (const [id, answer] of answered) {
        list.append(el("li", {}, badge(answer === "error" ? "error" : "done"), ` ${id}`));
      }
      for (const id of released) list.append(el("li", {}, badge("released"), ` ${id} went away`));
      parts.push(list);
    }
    const progress = Object.entries(step.progress || {});
    if (progress.length) {
      const grid = el("div", { class: "progress", role: "group", "aria-label": "Progress" });
      for (const [id, tree] of progress) addProgress(grid, id, tree, 0);
      parts.push(grid);
    }
    for (const error of step.errors || []) parts.push(el("p", { class: "problem" }, error));
    return el("div", {}, parts);
  }

  function leaves(tree) {
    if (tree.kind === "progress") return [tree.current, tree.total];
    let done = 0;
    let total = 0;
    for (const part of tree.parts || []) {
      const [d, t] = leaves(part);
      done += d / t;
      total += 1;
    }
    return total ? [done, total] : [0, 1];
  }

  function addProgress(grid, label, tree, depth) {
    const [current, total] = leaves(tree);
    const percent = Math.round((100 * current) / total);
    const name = depth === 0 ? label : tree.name;
    grid.append(
      el("span", { style: null }, `${"  ".repeat(depth)}${name}`),
      el("progress", { max: total, value: current, "aria-label": `${name} progress` }),
      el("span", {}, `${percent} %`));
    if (depth < 2 && tree.kind === "tree") for (const part of tree.parts || []) addProgress(grid, label, part, depth + 1);
  }

  function deadlineText(iso) {
    if (!iso) return "none";
    const left = (time(iso).getTime() - Date.now()) / 1000;
    return left >= 0 ? `in ${seconds(left)} (${clock(iso)})` : `passed ${seconds(-left)} ago`;
  }

  function tick() {
    for (const node of document.querySelectorAll("[data-deadline]")) {
      const iso = node.getAttribute("data-deadline");
      if (!iso) continue;
      node.textContent = deadlineText(iso);
      node.classList.toggle("soon", time(iso).getTime() - Date.now() < 5000);
    }
    for (const node of document.querySelectorAll("[data-heard]")) {
      node.textContent = ago(node.getAttribute("data-heard"));
    }
  }

  function renderLive() {
    const list = $("#live-tasks");
    // keep the keyboard where it was across a redraw
    const focused = list.contains(document.activeElement)
      ? [document.activeElement.closest("[data-task]").dataset.task, document.activeElement.tagName]
      : null;
    const tasks = [...state.tasks.values()].sort((a, b) => a.started_at.localeCompare(b.started_at));
    $("#live-empty").hidden = tasks.length > 0;
    list.replaceChildren(...tasks.map((task) => el("li", { class: "card task-card", "data-task": task.id },
      el("h2", {}, el("a", { href: `#task/${encodeURIComponent(task.id)}` }, workflowName(task.workflow)),
        " ", task.state === "queued" ? badge("current", "◌ queued") : badge("running", "▶ running")),
      el("p", {}, `task ${task.id} · started ${clock(task.started_at)}`),
      stepDetails(task),
      el("p", { class: "actions" }, el("button", {
        type: "button", class: "danger", onclick: () => confirmStop(task),
      }, "Stop…")))));
    if (focused) {
      const card = [...list.children].find((node) => node.dataset.task === focused[0]);
      const target = card && card.querySelector(focused[1] === "A" ? "a" : "button");
      if (target) target.focus();
    }
  }

  async function loadTasks() {
    const known = new Set(state.tasks.keys()); // tasks seen starting meanwhile stay
    const tasks = await json("/tasks?limit=0");
    const running = new Set(tasks.filter((task) => task.running).map((task) => task.id));
    for (const id of known) if (!running.has(id)) state.tasks.delete(id);
    for (const task of tasks) if (task.running && !state.finished.has(task.id)) state.tasks.set(task.id, task);
    renderLive();
    if (currentTask && !state.tasks.has(currentTask)) openTask(currentTask);
    else if (currentTask) renderTask(state.tasks.get(currentTask));
  }

  // ---------------------------------------------------------------- stopping and starting

  let stopping = null;

  function confirmStop(task) {
    stopping = task;
    $("#confirm-stop-text").textContent =
      `Task ${task.id} of ${workflowName(task.workflow)} ends as “stopped”; listeners still owed an answer are sent an abort.`;
    $("#confirm-stop").showModal();
  }

  async function onConfirmClose() {
    const task = stopping;
    stopping = null;
    if (!task || $("#confirm-stop").returnValue !== "stop") return;
    try {
      await json(`/task/${encodeURIComponent(task.id)}`, { method: "DELETE" });
      refreshTask(task.id, 0);
    } catch (error) {
      report(error);
    }
  }

  async function startWorkflow(id, out, kind = "workflow") {
    out.textContent = `starting ${id}…`;
    try {
      const body = await json(`/${kind}/${encodeURIComponent(id)}/run`, { method: "POST" });
      out.textContent = body.task_id
        ? `${id}: ${body.decision} as task ${body.task_id}${body.reason ? ` (${body.reason})` : ""}`
        : `${id}: ${body.decision}${body.reason ? ` (${body.reason})` : ""}`;
      if (body.task_id && body.decision === "started") refreshTask(body.task_id, 0);
    } catch (error) {
      out.textContent = `could not start ${id}: ${error.message}`;
    }
  }

  // ---------------------------------------------------------------- one task

  let currentTask = null;

  function diagram(workflowId) {
    if (!state.diagrams.has(workflowId)) {
      const promise = api(`/ui/diagram/${encodeURIComponent(workflowId)}.svg`).then((response) => {
        if (!response.ok) throw new Error(`no diagram for ${workflowId} (${response.status})`);
        return response.text();
      });
      promise.catch(() => state.diagrams.delete(workflowId));
      state.diagrams.set(workflowId, promise);
    }
    return state.diagrams.get(workflowId);
  }

  async function showDiagram(container, workflowId) {
    if (container.dataset.workflow === workflowId && container.firstElementChild) return container.firstElementChild;
    // the page's style sheet draws it: its own defaults go (inline styles break the CSP)
    const text = (await diagram(workflowId)).replace(/<style>[^<]*<\/style>/g, "");
    const parsed = new DOMParser().parseFromString(text, "image/svg+xml").documentElement;
    const svg = document.importNode(parsed, true);
    container.replaceChildren(svg);
    container.dataset.workflow = workflowId;
    return svg;
  }

  function light(svg, task) {
    const classes = ["current", "done", "error", "timed_out", "released", "stopped", "stalled"];
    const marks = new Map();
    const passed = task.steps || [];
    if (passed.length || task.step || !task.running) marks.set("start", ["done"]);
    for (const step of passed) {
      const end = stepEnd(step);
      const found = [end];
      if ((step.released || []).length && end !== "released") found.push("released");
      marks.set(step.name, found);
    }
    if (task.running && task.step) {
      const found = ["current"];
      if (task.step.stalled) found.push("stalled");
      if ((task.step.released || []).length) found.push("released");
      marks.set(task.step.name, found);
    }
    if (!task.running) {
      const outcome = task.outcome;
      marks.set("end", [outcome === "done" ? "done" : outcome === "failed" ? "error" : "stopped"]);
    }
    for (const group of svg.querySelectorAll(".state")) {
      const name = group.getAttribute("data-state");
      const found = marks.get(name) || [];
      group.classList.remove(...classes);
      group.classList.add(...found);
      const mark = group.querySelector(".mark");
      const words = name === "end" && !task.running
        ? OUTCOME_MARKS[task.outcome] || task.outcome
        : found.map((kind) => MARKS[kind]).join(" ");
      if (mark) mark.textContent = words;
      group.setAttribute("aria-label", `${name}${words ? `: ${words}` : ""}`);
    }
  }

  async function openTask(id) {
    currentTask = id;
    showOnly("task");
    $("#task-title").textContent = `Task ${id}`;
    try {
      const response = await api(`/task/${encodeURIComponent(id)}`);
      if (response.status === 404) {
        $("#task-facts").replaceChildren(el("dt", {}, "Task"), el("dd", { class: "problem" }, "no such task"));
        return;
      }
      renderTask(await response.json());
    } catch (error) {
      report(error);
    }
  }

  async function renderTask(task) {
    if (!task || currentTask !== task.id) return;
    $("#task-title").textContent = `${workflowName(task.workflow)} · task ${task.id}`;
    const facts = $("#task-facts");
    facts.replaceChildren(
      el("dt", {}, "Workflow"), el("dd", {}, task.workflow),
      el("dt", {}, "State"), el("dd", {}, task.running
        ? badge("running", `▶ running: ${task.state}`)
        : badge(task.outcome, OUTCOME_MARKS[task.outcome] || task.outcome)),
      el("dt", {}, "Started"), el("dd", {}, stamp(task.started_at)),
    );
    if (!task.running) {
      facts.append(el("dt", {}, "Ended"), el("dd", {}, stamp(task.ended_at)),
        el("dt", {}, "Duration"), el("dd", {}, seconds(task.duration)));
      if (task.error) facts.append(el("dt", {}, "Error"), el("dd", { class: "problem" }, task.error));
    }
    const stop = $("#task-stop");
    stop.hidden = !task.running;
    stop.onclick = () => confirmStop(task);
    $("#task-current").hidden = !task.running;
    if (task.running) $("#task-step").replaceChildren(stepDetails(task));
    $("#task-timeline").replaceChildren(...timeline(task));
    try {
      const svg = await showDiagram($("#task-diagram"), task.workflow);
      if (currentTask === task.id) light(svg, task);
    } catch (error) {
      $("#task-diagram").replaceChildren(el("p", { class: "problem" }, error.message));
    }
    if (!task.running) loadLog(task.id);
    else $("#task-log-section").hidden = true;
  }

  function timeline(task) {
    const steps = [...(task.steps || [])];
    const begin = time(task.started_at).getTime();
    const current = task.running && task.step ? task.step : null;
    const end = task.running ? Date.now() : time(task.ended_at).getTime();
    const total = Math.max(end - begin, 1);
    const rows = steps.map((step) => {
      const kind = stepEnd(step);
      const answers = Object.entries(step.answered || {});
      const released = step.released || [];
      const who = [
        ...answers.map(([id, answer]) => `${id}: ${answer}`),
        ...released.map((id) => `${id}: released`),
      ];
      return row(step.name, time(step.started_at).getTime(), time(step.ended_at).getTime(), kind,
        step.duration, who, step.errors || []);
    });
    if (current) {
      const who = [
        ...Object.entries(current.answered || {}).map(([id, answer]) => `${id}: ${answer}`),
        ...current.waiting_for.map((id) => `${id}: owed`),
      ];
      rows.push(row(current.name, time(current.started_at).getTime(), end, "current",
        (end - time(current.started_at).getTime()) / 1000, who, current.errors || []));
    }
    if (!rows.length) rows.push(el("li", { class: "empty" }, "No step has ended yet."));
    return rows;

    function row(name, from, to, kind, duration, who, errors) {
      const left = (100 * (from - begin)) / total;
      const width = Math.max((100 * (to - from)) / total, 0.4);
      const mark = kind === "done" ? MARKS.done : MARKS[kind] || kind;
      return el("li", { "data-step": name },
        el("span", { class: "step-name" }, name, " ", badge(kind, mark)),
        el("span", { class: "track", "aria-hidden": "true" },
          el("span", { class: `bar ${kind}`, style: null, "data-left": left, "data-width": width })),
        el("span", { class: "duration" }, seconds(duration)),
        el("span", { class: "who" }, who.length ? `answered: ${who.join(", ")}` : "nobody was owed an answer",
          ...errors.map((error) => el("span", { class: "problem" }, ` · ${error}`))));
    }
  }

  function placeBars(root) {
    // Sizes are set through the CSSOM, which the page's content security policy allows.
    for (const bar of root.querySelectorAll(".bar[data-left]")) {
      bar.style.left = `${bar.dataset.left}%`;
      bar.style.width = `${bar.dataset.width}%`;
    }
  }

  async function loadLog(id) {
    const section = $("#task-log-section");
    try {
      const response = await api(`/task/${encodeURIComponent(id)}/log`);
      if (response.status !== 200) {
        section.hidden = true;
        return;
      }
      const body = await response.json();
      const entries = Array.isArray(body) ? body : body.entries || body.log || [];
      $("#task-log").replaceChildren(...entries.map(logEntry));
      if (!entries.length) $("#task-log").append(el("li", { class: "empty" }, "empty"));
      section.hidden = currentTask !== id;
    } catch (error) {
      section.hidden = true;
    }
  }

  function logEntry(entry) {
    if (typeof entry !== "object" || entry === null) return el("li", {}, String(entry));
    const kind = [...new Set([entry.kind, entry.level].filter(Boolean))].join(" ");
    const bad = ["error", "timeout", "stalled"].includes(entry.kind) || entry.level === "error";
    const who = entry.subscriber || entry.subscriber_id;
    return el("li", { class: bad ? "level-error" : "" }, entry.at ? `${clock(entry.at)} ` : "",
      kind ? `[${bad ? "✗ " : ""}${kind}] ` : "", entry.step ? `${entry.step}` : "",
      who ? ` · ${who}` : "", entry.step || who ? ": " : "", entry.message || JSON.stringify(entry));
  }

  // ---------------------------------------------------------------- history

  let historyLoaded = false;
  let historyFilters = {};

  function matchesFilters(task) {
    const f = historyFilters;
    if (f.workflow && task.workflow !== f.workflow) return false;
    if (f.outcome && task.outcome !== f.outcome) return false;
    if (f.has_errors && String(hasErrors(task)) !== f.has_errors) return false;
    if (f.since && time(task.ended_at) < new Date(f.since)) return false;
    return true;
  }

  function historyItem(task) {
    const item = el("li", { "data-task": task.id },
      el("h2", {}, el("a", { href: `#task/${encodeURIComponent(task.id)}` }, workflowName(task.workflow)),
        " ", badge(task.outcome, OUTCOME_MARKS[task.outcome] || task.outcome),
        hasErrors(task) ? badge("error", "✗ has errors") : null),
      el("p", {}, `task ${task.id} · ended ${stamp(task.ended_at)} · ${seconds(task.duration)}`),
      el("ol", { class: "timeline" }, timeline(task)));
    placeBars(item);
    return item;
  }

  let historyAsked = 0;

  async function loadHistory(event) {
    if (event) event.preventDefault();
    const asked = ++historyAsked; // only the latest request's answer is shown
    const form = new FormData($("#history-form"));
    historyFilters = Object.fromEntries([...form.entries()].filter(([, v]) => v));
    const query = new URLSearchParams({ limit: "50" });
    for (const key of ["workflow", "outcome", "has_errors"]) if (historyFilters[key]) query.set(key, historyFilters[key]);
    if (historyFilters.since) query.set("since", new Date(historyFilters.since).toISOString());
    let tasks;
    try {
      tasks = await json(`/tasks?${query}`);
    } catch (error) {
      if (!String(error.message).includes("has_errors")) throw error;
      query.delete("has_errors"); // a server without the filter: filter here
      tasks = await json(`/tasks?${query}`);
    }
    if (asked !== historyAsked) return;
    const finished = tasks.filter((task) => !task.running && matchesFilters(task));
    for (const task of finished) state.finished.set(task.id, task);
    $("#history-list").replaceChildren(...finished.map(historyItem));
    $("#history-empty").hidden = finished.length > 0;
    historyLoaded = true;
  }

  // ---------------------------------------------------------------- workflows, subscribers, schedules

  async function loadWorkflows() {
    const summaries = await json("/workflows");
    const declarations = await Promise.all(summaries.map((w) =>
      json(`/workflow/${encodeURIComponent(w.id)}`).catch(() => null)));
    summaries.forEach((summary, index) => {
      state.workflows.set(summary.id, { summary, declaration: declarations[index] });
    });
    const select = $("#start-workflow");
    const chosen = select.value;
    select.replaceChildren(...summaries.filter((w) => w.kind !== "job").map((w) => el("option", { value: w.id }, w.id)));
    if (chosen) select.value = chosen;
    const filter = $("#history-form select[name=workflow]");
    const filterValue = filter.value;
    filter.replaceChildren(el("option", { value: "" }, "any"), ...summaries.map((w) => el("option", { value: w.id }, w.id)));
    filter.value = filterValue;
    renderWorkflows(summaries);
    const upcoming = await json("/ui/schedules").catch(() => ({ next: {} }));
    renderSchedules(summaries, upcoming.next);
  }

  function renderWorkflows(summaries) {
    // a redraw keeps the diagrams a person opened open
    const opened = new Set([...document.querySelectorAll("#workflow-list details[open]")]
      .map((node) => node.closest("[data-workflow]").dataset.workflow));
    $("#workflow-list").replaceChildren(...summaries.map((w) => {
      const out = el("p", { role: "status", "aria-live": "polite" });
      const holder = el("div", { class: "diagram" });
      const details = el("details", {
        ontoggle: () => {
          if (details.open && !holder.firstElementChild) {
            showDiagram(holder, w.id).catch((error) => holder.replaceChildren(el("p", { class: "problem" }, error.message)));
          }
        },
      }, el("summary", {}, "State machine"), holder);
      if (opened.has(w.id)) details.open = true; // its toggle event draws the diagram
      // where the server can pause a definition's triggers, a button does it
      const pausable = typeof w.active === "boolean";
      const toggle = pausable
        ? el("button", { type: "button", onclick: () => setActive(w, !w.active, out) },
          w.active ? "Pause its triggers" : "Resume its triggers")
        : null;
      return el("article", { class: "workflow", "data-workflow": w.id },
        el("h2", {}, w.id, " ", el("small", {}, `(${w.kind})`), " ",
          pausable ? badge(w.active ? "done" : "stopped", w.active ? "● active" : "‖ paused") : null),
        w.description ? el("p", {}, w.description) : null,
        el("p", {}, `${w.steps.length} steps · surpass ${w.surpass} · next run ${w.next_run ? stamp(w.next_run) : "not scheduled"}`,
          w.origin ? ` · from ${w.origin}` : ""),
        el("p", { class: "actions" }, el("button", { type: "button", onclick: () => startWorkflow(w.id, out, w.kind === "job" ? "job" : "workflow") }, `Start ${w.id}`), toggle),
        out, details);
    }));
  }

  async function setActive(w, active, out) {
    const kind = w.kind === "job" ? "job" : "workflow";
    try {
      await json(`/${kind}/${encodeURIComponent(w.id)}/${active ? "activate" : "deactivate"}`, { method: "POST" });
      await loadWorkflows();
      const status = document.querySelector(`#workflow-list [data-workflow="${CSS.escape(w.id)}"] [role=status]`);
      if (status) status.textContent = `${w.id}: triggers ${active ? "resumed" : "paused"}`;
    } catch (error) {
      out.textContent = `could not ${active ? "resume" : "pause"} ${w.id}: ${error.message}`;
    }
  }

  function renderSchedules(summaries, upcoming) {
    $("#schedules").replaceChildren(...summaries.map((w) => {
      const crons = (w.schedules || []).map((s) => `${s.cron} (${s.timezone})`).join(", ") || "no schedule";
      const ledger = (w.ledger || []).slice().reverse();
      const next = (upcoming || {})[w.id] || [];
      return el("section", { class: "workflow", "aria-label": `schedule of ${w.id}`, "data-schedule": w.id },
        el("h3", {}, w.id),
        el("p", {}, `${crons} · next run: ${w.next_run ? stamp(w.next_run) : "none"}`),
        next.length ? el("p", { class: "next-times" }, "Next fire times: ",
          el("span", {}, next.map((iso) => stamp(iso)).join(" · "))) : null,
        ledger.length
          ? el("div", { class: "scroll" }, el("table", {},
            el("thead", {}, el("tr", {}, ...["Planned", "Fired", "Outcome", "Task"].map((h) => el("th", { scope: "col" }, h)))),
            el("tbody", {}, ...ledger.map((f) => el("tr", {},
              el("td", {}, stamp(f.planned)), el("td", {}, stamp(f.actual)), el("td", {}, f.outcome),
              el("td", {}, f.task_id ? el("a", { href: `#task/${encodeURIComponent(f.task_id)}` }, f.task_id) : "–"))))))
          : el("p", { class: "empty" }, (w.schedules || []).length ? "The schedule has not fired yet." : "Started by events and by hand only."));
    }));
  }

  async function loadBus() {
    const [subscribers, listeners] = await Promise.all([json("/subscribers"), json("/ui/listeners")]);
    const connected = new Set(listeners.listeners.map((l) => l.subscriber_id).filter(Boolean));
    $("#subscribers tbody").replaceChildren(...subscribers.map((s) => el("tr", { "data-subscriber": s.id },
      el("th", { scope: "row" }, s.id),
      el("td", {}, connected.has(s.id) ? badge("done", "⇄ connected") : badge("stopped", "✕ not connected")),
      el("td", {}, Object.values(s.subscriptions).map((sub) =>
        `${sub.message_type}: ${sub.wait_for_completion ? "waits" : "does not wait"}, ${sub.timeout} s`).join("; ")))));
    $("#listeners tbody").replaceChildren(...listeners.listeners.map((l) => el("tr", {},
      el("th", { scope: "row" }, l.id), el("td", {}, l.subscriber_id || "–"),
      el("td", {}, l.message_types ? l.message_types.join(", ") : "every message type"))));
    $("#dropped").textContent = `${listeners.listeners.length} connected; ${listeners.dropped} dropped for being too slow since the server started.`;
  }

  // ---------------------------------------------------------------- views

  async function route() {
    if (state.signedOut) return;
    const hash = decodeURIComponent(location.hash.slice(1)) || "live";
    if (hash.startsWith("task/")) {
      await openTask(hash.slice(5));
      return;
    }
    currentTask = null;
    const view = ["live", "workflows", "history", "bus"].includes(hash) ? hash : "live";
    showOnly(view);
    try {
      if (view === "history") await loadHistory();
      if (view === "bus") await Promise.all([loadBus(), loadWorkflows()]);
      if (view === "workflows") await loadWorkflows();
    } catch (error) {
      report(error);
    }
  }

  function report(error) {
    if (error instanceof Unauthorized) return;
    console.error(error);
    setStatus(`error: ${error.message}`, false);
  }

  async function start() {
    $("#nav").hidden = false;
    setStatus("connecting…");
    try {
      await loadWorkflows();
      await loadTasks();
    } catch (error) {
      report(error);
      if (error instanceof Unauthorized) return;
    }
    connect();
    await route();
  }

  // Watch the timeline bars appear and place them (they are built as elements with data).
  new MutationObserver((records) => {
    for (const record of records) for (const node of record.addedNodes) if (node.nodeType === 1) placeBars(node);
  }).observe(document.body, { childList: true, subtree: true });

  document.addEventListener("DOMContentLoaded", async () => {
    $("#sign-in-form").addEventListener("submit", signIn);
    $("#sign-out").addEventListener("click", () => signOut(""));
    $("#start-form").addEventListener("submit", (event) => {
      event.preventDefault();
      startWorkflow($("#start-workflow").value, $("#start-result"));
    });
    $("#history-form").addEventListener("submit", (event) => loadHistory(event).catch(report));
    $("#confirm-stop").addEventListener("close", onConfirmClose);
    window.addEventListener("hashchange", () => route());
    setInterval(tick, 1000);
    // Is the API open? A 401 shows the sign-in and nothing else.
    const probe = await fetch("/workflows", { cache: "no-store" });
    if (probe.status === 401) {
      signOut("");
      setStatus("sign-in needed", false);
      return;
    }
    await start();
  });
})();
