// teal's dashboard. Reads one server-sent event stream (/ui/stream) and draws the slots, traffic, rollout,
// memory, fleet and audit log from it; actions call the JSON admin API with the session's CSRF token and a
// reason for the audit log. All text from the server goes in through textContent, never as HTML.
'use strict';

const CSRF = document.querySelector('meta[name="teal-csrf"]').content;
const OPERATOR = document.body.dataset.role === 'operator';
const SLOTS = ['blue', 'green'];
const KEEP_POINTS = 300;
const KEEP_EVENTS = 500;

const $ = (id) => document.getElementById(id);
const traffic = [];
const events = [];
let latest = null;
const drawn = {};

// ---- small helpers ----------------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'onclick') node.addEventListener('click', v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function kv(pairs) {
  return el('dl', { class: 'kv' }, pairs.filter((p) => p[1] !== undefined && p[1] !== null && p[1] !== '')
    .map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
}

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const num = (v, digits = 1) => (v === null || v === undefined ? '–' : Number(v).toFixed(digits));
const secs = (v) => (v === null || v === undefined ? '–' : `${Number(v).toFixed(2)} s`);

function table(headers, rows, id) {
  return el('div', { class: 'table-wrap' }, el('table', { id },
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, rows.map((r) => el('tr', {}, r.map((c) => el('td', {}, c)))))));
}

// Redraws a container only when its input changed, keeping keyboard focus on the same control.
function redraw(id, input, build) {
  const key = JSON.stringify(input);
  if (drawn[id] === key) return;
  drawn[id] = key;
  const focused = document.activeElement && document.activeElement.id;
  $(id).replaceChildren(...[].concat(build()).flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  if (focused && $(focused) && document.activeElement !== $(focused)) $(focused).focus();
}

function toast(text) {
  $('toast').textContent = text;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { $('toast').textContent = ''; }, 6000);
}

// ---- actions ------------------------------------------------------------------------------------------------

async function call(method, path, body, reason) {
  const headers = { 'X-CSRF-Token': CSRF };
  if (reason) headers['X-Teal-Reason'] = encodeURIComponent(reason);
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin' });
  const text = await resp.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { data = null; }
  if (!resp.ok) {
    const msg = (data && data.error && (data.error.message || data.error)) || text || resp.statusText;
    throw new Error(`${resp.status}: ${msg}`);
  }
  return data;
}

// Asks for confirmation and a reason, then runs the action; errors stay in the dialog.
function confirmThen(text, action) {
  const dialog = $('confirm');
  $('confirm-text').textContent = text;
  $('confirm-error').textContent = '';
  $('confirm-reason').value = '';
  const form = $('confirm-form');
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    const reason = $('confirm-reason').value.trim();
    if (!reason) { $('confirm-error').textContent = 'Give a reason: it goes to the audit log.'; return; }
    $('confirm-ok').disabled = true;
    try {
      await action(reason);
      dialog.close();
      toast(`Done: ${text}`);
    } catch (e) {
      $('confirm-error').textContent = e.message;
    } finally {
      $('confirm-ok').disabled = false;
    }
  };
  dialog.showModal();
  $('confirm-reason').focus();
}

function act(label, method, path, body) {
  return () => confirmThen(label, (reason) => call(method, path, body, reason));
}

function rolloutId() {
  const r = latest && latest.rollout;
  return r ? r.id : 'current';
}

function wireActions() {
  $('sign-out').addEventListener('click', async () => {
    try { await fetch('/logout', { method: 'POST', headers: { 'X-CSRF-Token': CSRF } }); } catch (_) { /* gone */ }
    window.location.assign('/login');
  });
  $('act-flip').addEventListener('click', act('Flip traffic to the standby slot', 'POST', '/admin/flip', {}));
  $('act-rollback').addEventListener('click', act('Roll back to the previous live slot', 'POST', '/admin/rollback', {}));
  for (const a of ['pause', 'resume', 'promote', 'abort']) {
    $(`act-${a}`).addEventListener('click', () => act(`${a[0].toUpperCase()}${a.slice(1)} the rollout`, 'POST',
      `/admin/rollouts/${encodeURIComponent(rolloutId())}/${a}`)());
  }
  $('load-refresh').addEventListener('click', loadModels);
  $('load-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const model = $('load-model').value;
    const slot = $('load-slot').value;
    const body = { model };
    if ($('load-version').value.trim()) body.version = $('load-version').value.trim();
    confirmThen(`Load ${model} into ${slot}`, (reason) => call('POST', `/admin/slots/${slot}/load`, body, reason));
  });
  $('rollout-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const steps = $('rollout-steps').value.split(',').map((s) => Number(s.trim())).filter((s) => s > 0);
    const body = { steps, step_interval_s: Number($('rollout-interval').value),
      shadow_rate: Number($('rollout-shadow').value), bake_s: Number($('rollout-bake').value) };
    const live = latest && latest.status && latest.status.live;
    body.to = SLOTS.find((s) => s !== live) || 'green';
    confirmThen(`Start a rollout to ${body.to} in steps ${steps.join(', ')}%`,
      (reason) => call('POST', '/admin/rollouts', body, reason));
  });
  $('confirm-cancel').addEventListener('click', () => $('confirm').close());
}

async function loadModels() {
  try {
    const list = await call('GET', '/admin/models');
    const sel = $('load-model');
    const keep = sel.value;
    sel.replaceChildren(...list.models.map((m) => el('option', { value: m.name }, `${m.name} (${m.kind}, ${bytes(m.bytes)})`)));
    if (keep) sel.value = keep;
    if (!list.models.length) sel.append(el('option', { value: '' }, `nothing in ${list.root}`));
  } catch (e) {
    toast(`Cannot list the models: ${e.message}`);
  }
}

// ---- views --------------------------------------------------------------------------------------------------

function slotButtons(v, status) {
  if (!OPERATOR) return [];
  const s = v.slot;
  const b = [];
  const running = ['loading', 'warming', 'gating', 'parking', 'waking'].includes(v.state);
  if (v.state === 'ready' && !v.live) {
    b.push(el('button', { type: 'button', id: `act-flip-${s}`, onclick: act(`Flip traffic to ${s}`, 'POST', '/admin/flip', { to: s }) }, `Make ${s} live`));
  }
  if (v.state === 'ready' && !v.live) b.push(el('button', { type: 'button', id: `act-park-${s}`, onclick: act(`Park ${s}`, 'POST', `/admin/slots/${s}/park`) }, 'Park'));
  if (v.state === 'parked') b.push(el('button', { type: 'button', id: `act-wake-${s}`, onclick: act(`Wake ${s}`, 'POST', `/admin/slots/${s}/wake`) }, 'Wake'));
  if (running && v.operation) {
    b.push(el('button', { type: 'button', id: `act-cancel-${s}`, class: 'danger',
      onclick: act(`Cancel ${v.operation} on ${s}`, 'POST', `/admin/operations/${encodeURIComponent(v.operation)}/cancel`) }, 'Cancel operation'));
  }
  if (!v.live && !running && v.state !== 'empty') {
    b.push(el('button', { type: 'button', id: `act-unload-${s}`, class: 'danger', onclick: act(`Unload ${s}`, 'DELETE', `/admin/slots/${s}`) }, 'Unload'));
  }
  return b.length ? [el('div', { class: 'actions' }, b)] : [];
}

function gatesView(g) {
  if (!g) return [];
  return [el('details', {}, el('summary', {}, `Gates: ${g.passed ? 'passed' : 'failed'}${g.forced ? ' (forced)' : ''} in ${secs(g.seconds)}`),
    el('ul', {}, g.results.map((r) => el('li', {},
      el('span', { class: r.skipped ? 'skipped' : r.passed ? 'pass' : 'fail' }, `${r.gate}: ${r.summary}`),
      r.details && Object.keys(r.details).length
        ? el('details', {}, el('summary', {}, 'cases'), el('pre', {}, JSON.stringify(r.details, null, 1))) : null))))];
}

function warmupView(w) {
  if (!w) return [];
  const cold = w.first_request_cold;
  const warm = w.first_request_warm;
  return [el('details', {}, el('summary', {}, `Warm-up: ${w.enabled ? secs(w.seconds) : 'off'}`), kv([
    ['requests', w.requests], ['batch sizes', (w.batch_sizes || []).join(', ')], ['prefill tokens', w.prefill_tokens],
    ['first request, cold', cold ? `TTFT ${num(cold.ttft_ms)} ms, total ${num(cold.total_ms)} ms` : null],
    ['same request, warm', warm ? `TTFT ${num(warm.ttft_ms)} ms, total ${num(warm.total_ms)} ms` : null],
    ['kernels loaded', (w.kernels_loaded || []).join(', ')]]))];
}

function slotView(v, status) {
  const m = v.model;
  const mem = v.memory;
  return [
    el('h3', {}, el('span', { class: `name-${v.slot}` }, v.slot),
      v.live ? el('span', { class: 'badge' }, 'live') : el('span', { class: 'badge muted' }, 'standby'),
      el('span', { class: `state state-${v.state}` }, v.state)),
    v.reason ? el('p', { class: 'state-failed' }, `Failed: ${v.reason}`) : null,
    kv([['model', m ? m.name : '–'], ['version', m ? m.version : null], ['digest', m ? m.digest.slice(0, 16) : null],
      ['device', m ? m.device : mem ? mem.device : null], ['format', m ? `${m.format} (${m.kind})` : null],
      ['loaded', v.loaded_at ? `${v.loaded_at} in ${secs(v.load_seconds)}` : null],
      ['memory', mem ? `${bytes(mem.device_bytes)} (weights ${bytes(mem.weights_bytes)}, KV ${bytes(mem.kv_cache_bytes)})` : null],
      ['in flight', v.in_flight], ['pinned sessions', v.pinned_sessions || null],
      ['parked', v.park && v.park.parked_at ? `${v.park.parked_at} (${secs(v.park.park_seconds)})` : null],
      ['rollback ready in', v.rollback_eta_s !== null && v.rollback_eta_s !== undefined && !v.live ? secs(v.rollback_eta_s) : null],
      ['operation', v.operation]]),
    warmupView(v.warmup), gatesView(v.gates), slotButtons(v, status)];
}

function renderSlots(s) {
  const st = s.status;
  if (!st || st.error) { $('live-slot').textContent = 'unknown'; return; }
  const live = st.live ? st.slots[st.live] : null;
  $('live-slot').textContent = st.live || 'none';
  $('live-version').textContent = live && live.model ? `${live.model.name} ${live.model.version}` : '';
  for (const name of SLOTS) {
    const v = st.slots[name];
    const card = $(`slot-${name}`);
    card.dataset.live = String(!!v.live);
    card.dataset.state = v.state;
    redraw(`slot-${name}`, v, () => slotView(v, st));
  }
  $('act-flip').disabled = !SLOTS.some((n) => st.slots[n].state === 'ready' && !st.slots[n].live);
  $('act-rollback').disabled = !st.previous_live;
}

const CHARTS = [['chart-weight', 'weight_pct'], ['chart-rps', 'rps'], ['chart-errors', 'errors_ps'],
  ['chart-ttft', 'ttft_p50_ms'], ['chart-itl', 'itl_p50_ms']];
const charts = {};
const CHART_HEIGHT = 160;

// Charts follow their boxes' width (laptop and phone alike).
const resizer = typeof ResizeObserver === 'undefined' ? null : new ResizeObserver((entries) => {
  for (const e of entries) {
    const c = charts[e.target.id];
    const width = Math.floor(e.contentRect.width);
    if (c && width > 0 && Math.abs(c.width - width) > 2) c.setSize({ width, height: CHART_HEIGHT });
  }
});

function renderTraffic() {
  const last = traffic[traffic.length - 1];
  const row = (n) => [n, last ? `${num(last[n].weight_pct, 0)}%` : '–', last ? num(last[n].rps, 2) : '–',
    last ? num(last[n].errors_ps, 2) : '–', last ? `${num(last[n].ttft_p50_ms)} / ${num(last[n].ttft_p95_ms)}` : '–',
    last ? `${num(last[n].itl_p50_ms)} / ${num(last[n].itl_p95_ms)}` : '–'];
  redraw('traffic-now', last || null, () => [el('caption', {}, 'Now (last 5 s)'),
    el('thead', {}, el('tr', {}, ['slot', 'weight', 'requests/s', 'errors/s', 'TTFT p50/p95 ms', 'ITL p50/p95 ms'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, SLOTS.map((n) => el('tr', {}, row(n).map((c) => el('td', {}, c)))))]);
  if (typeof uPlot === 'undefined') return;
  const xs = traffic.map((p) => p.t);
  for (const [id, field] of CHARTS) {
    const data = [xs, traffic.map((p) => p.blue[field]), traffic.map((p) => p.green[field])];
    const box = $(id);
    if (!charts[id]) {
      const width = Math.max(200, box.clientWidth || 320);
      charts[id] = new uPlot({ width, height: CHART_HEIGHT, legend: { show: true },
        series: [{}, { label: 'blue', stroke: '#1f5fbf', width: 2 }, { label: 'green', stroke: '#1a7f37', width: 2, dash: [6, 3] }],
        axes: [{}, { size: 50 }] }, data, box);
      if (resizer) resizer.observe(box);
    } else {
      charts[id].setData(data);
    }
  }
}

function decisionRows(r) {
  return r.decisions.map((d) => [d.time.slice(11, 19), d.decision, `${num(d.weight_pct, 0)}%`, d.metric || '–',
    d.value === null ? '–' : num(d.value, 4), d.threshold === null ? '–' : num(d.threshold, 4),
    `${d.samples.baseline} / ${d.samples.canary}`, d.reason]);
}

function rolloutView(r) {
  if (!r) return [el('p', { class: 'muted' }, 'No rollout yet.')];
  const sh = r.shadow;
  const arm = (a) => `${a.requests} requests, ${a.server_errors} errors, TTFT p50 ${num(a.ttft_ms.p50)} ms, ITL p50 ${num(a.itl_ms.p50)} ms`;
  return [
    kv([['rollout', r.id], ['state', el('strong', { id: 'rollout-state' }, `${r.state}${r.baking ? ' (baking)' : ''}`)],
      ['from → to', `${r.baseline.slot} ${r.baseline.version} → ${r.canary.slot} ${r.canary.version}`],
      ['weight', el('span', { id: 'rollout-weight' }, `${num(r.weight_pct, 1)}% to the canary`)],
      ['steps', r.steps.map((w, i) => (i === r.step ? `[${w}%]` : `${w}%`)).join(' → ')],
      ['elapsed', secs(r.elapsed_s)], ['why it ended', r.reason],
      ['baseline', arm(r.arms.baseline)], ['canary', arm(r.arms.canary)],
      ['shadow', `${sh.compared} compared, agreement ${sh.agreement === null ? '–' : `${num(sh.agreement * 100)}%`} (A/A ${sh.aa_agreement === null ? '–' : `${num(sh.aa_agreement * 100)}%`}), ${sh.shed} shed`],
      ['report', el('span', {}, el('a', { href: `/admin/rollouts/${encodeURIComponent(r.id)}/report?format=markdown` }, 'Markdown'), ' · ',
        el('a', { href: `/admin/rollouts/${encodeURIComponent(r.id)}/report?format=svg` }, 'SVG'), ' · ',
        el('a', { href: `/admin/rollouts/${encodeURIComponent(r.id)}/report` }, 'JSON'))]]),
    el('h3', {}, 'Latest comparisons'),
    table(['metric', 'verdict', 'canary', 'baseline', 'threshold', 'samples b/c'],
      r.comparisons.map((c) => [c.metric, c.verdict, num(c.value, 4), num(c.baseline, 4), num(c.threshold, 4), `${c.samples.baseline} / ${c.samples.canary}`])),
    el('h3', {}, 'Decisions'),
    table(['time', 'decision', 'weight', 'metric', 'value', 'threshold', 'samples b/c', 'reason'], decisionRows(r), 'decisions')];
}

function renderRollout(s) {
  const r = s.rollout;
  redraw('rollout-view', r, () => rolloutView(r));
  const active = r && ['progressing', 'paused'].includes(r.state);
  $('rollout-actions').hidden = !active;
  $('rollout-form').hidden = !!active;
  $('act-pause').disabled = !(r && r.state === 'progressing');
  $('act-resume').disabled = !(r && r.state === 'paused');
}

function renderMemory(s) {
  const m = s.memory;
  redraw('memory-view', m, () => {
    if (!m || m.error) return el('p', {}, m ? m.error : 'no report');
    return [
      table(['device', 'held', 'weights', 'shared', 'KV cache', 'workspace', 'budget', 'free within budget', 'available', 'slots'],
        m.devices.map((d) => [d.device, bytes(d.held_bytes), bytes(d.weights_bytes), bytes(d.shared_bytes), bytes(d.kv_cache_bytes),
          bytes(d.workspace_bytes), bytes(d.budget_bytes), bytes(d.free_within_budget_bytes), bytes(d.available_bytes), d.slots.join(', ')]), 'memory-devices'),
      table(['slot', 'device', 'on device', 'weights', 'shared', 'KV cache', 'workspace', 'host (parked)', 'estimate'],
        m.slots.map((x) => [x.slot, x.device, bytes(x.weights_bytes + x.kv_cache_bytes + x.workspace_bytes), bytes(x.weights_bytes), bytes(x.shared_bytes),
          bytes(x.kv_cache_bytes), bytes(x.workspace_bytes), bytes(x.host_bytes), x.estimate ? bytes(x.estimate.weights + x.estimate.kv + x.estimate.workspace) : '–']), 'memory-slots'),
      el('p', { class: 'muted' }, `Process resident memory: ${bytes(m.process_resident_bytes)}`)];
  });
}

function renderFleet(s) {
  const f = s.fleet;
  $('fleet').hidden = !f;
  $('nav-fleet').hidden = !f;
  if (!f) return;
  redraw('fleet-view', f, () => {
    if (f.error) return el('p', { class: 'state-failed' }, f.error);
    const t = f.target;
    return [kv([['fleet', f.name], ['this replica', f.replica_id], ['epoch', t ? t.epoch : '–'],
      ['target', t ? `${t.live.model} ${t.live.version}` : '–'], ['Redis last reached', `${num(f.staleness_s)} s ago`]]),
    table(['replica', 'state', 'live slot', 'live version', 'epoch', 'heartbeat age', 'why'],
      f.members.map((m) => [m.id, m.state, m.live_slot || '–', m.live_version || '–', m.epoch, `${num(m.staleness_s)} s`, m.reason || '']), 'fleet-members')];
  });
}

function renderAudit() {
  const shown = events.slice(-200).reverse();
  redraw('audit-list', shown.map((e) => e.seq), () => shown.map((e) => el('li', {},
    el('time', { datetime: e.time }, e.time.replace('T', ' ').slice(0, 19)), ' ',
    el('strong', {}, e.action), ` ${e.outcome}`, e.slot ? ` · ${e.slot}` : '',
    e.from_version || e.to_version ? ` · ${e.from_version || '–'} → ${e.to_version || '–'}` : '',
    e.forced ? ' · forced' : '', e.reason ? ` · “${e.reason}”` : '',
    e.details && e.details.path ? ` · ${e.details.method} ${e.details.path} (${e.details.role} via ${e.details.via}, ${e.details.status})` : '')));
}

function apply(s) {
  if (s.first) { traffic.length = 0; events.length = 0; }
  traffic.push(...s.traffic);
  traffic.splice(0, Math.max(0, traffic.length - KEEP_POINTS));
  events.push(...s.events);
  events.splice(0, Math.max(0, events.length - KEEP_EVENTS));
  latest = s;
  renderSlots(s);
  renderTraffic();
  renderRollout(s);
  renderMemory(s);
  renderFleet(s);
  renderAudit();
  document.body.dataset.updated = s.time;
}

function connect() {
  const es = new EventSource('/ui/stream');
  es.addEventListener('open', () => { $('conn').textContent = 'live'; });
  es.addEventListener('state', (e) => apply(JSON.parse(e.data)));
  es.addEventListener('error', () => {
    $('conn').textContent = 'reconnecting…';
    // A signed-out or expired session cannot reconnect: go to the sign-in page.
    fetch('/admin/slots', { credentials: 'same-origin' }).then((r) => { if (r.status === 401) window.location.assign('/login'); }).catch(() => {});
  });
}

// A script error is shown, not swallowed (and the browser test fails on it).
window.addEventListener('error', (e) => {
  document.body.dataset.scriptError = `${e.message} (${e.filename}:${e.lineno})`;
  toast(`Dashboard error: ${e.message}`);
});

wireActions();
if (OPERATOR) loadModels();
connect();
