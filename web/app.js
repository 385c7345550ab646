// skylaunch web UI: plain JavaScript over the admin REST API and its server-sent event streams.
// No build step; served from the binary. The admin token lives in session storage only.
'use strict';

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];
const TOKEN_KEY = 'skylaunch-token';
const API_KEY = 'skylaunch-api-key';

const STAGE_LABELS = {
  validate: 'Validate request', render_task: 'Render task', provision: 'Provision VM',
  instance_up: 'Instance up', setup: 'Set up', start_model_server: 'Start model server',
  register: 'Agent registers', ready: 'Ready',
};
const CLOUD_NAMES = { aws: 'AWS', azure: 'Azure', gcp: 'GCP', local: 'Local' };
const EVENT_KINDS = { orphan_terminated: 'Orphan terminated', instance_vanished: 'Instance vanished', legacy_orphan_kept: 'Kept: no installation id' };

// ---------- small helpers ----------

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c != null) e.append(c);
  return e;
}
function td(label, content, cls) {
  const cell = el('td', { 'data-label': label, class: cls });
  if (content instanceof Node) cell.append(content); else cell.textContent = content ?? '—';
  return cell;
}
// Keyboard focus survives re-rendering: a control is known by its row's key and its label.
function focusKey(e) {
  if (!e || !e.closest) return null;
  const row = e.closest('[data-node],[data-job],[data-action],[data-deployment],[data-host],[data-api-key]');
  return { row: row ? row.dataset.node || row.dataset.job || row.dataset.action || row.dataset.deployment || row.dataset.host || row.dataset.apiKey : null, label: e.getAttribute('aria-label') || e.textContent };
}
function refocus(container, key) {
  if (!key) return;
  const match = $$('a, button, input', container).find(e => { const k = focusKey(e); return k.row === key.row && k.label === key.label; });
  if (match) match.focus();
}
function keepFocus(container, render) {
  const active = document.activeElement;
  const key = active && container.contains(active) ? focusKey(active) : null;
  render();
  refocus(container, key);
}
function width(e, w) { e.style.width = w; return e; }
function badge(status) { return el('span', { class: 'badge s-' + status, text: status }); }
function time(iso) { return iso ? new Date(iso).toLocaleTimeString() : '—'; }
function dateTime(iso) { return iso ? new Date(iso).toLocaleString() : '—'; }
function duration(ms) {
  if (ms == null || ms < 0) return '';
  const s = Math.round(ms / 1000);
  if (s < 60) return s + ' s';
  const m = Math.floor(s / 60);
  if (m < 60) return m + ' min ' + (s % 60) + ' s';
  return Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
}
function ago(iso) {
  if (!iso) return 'never';
  const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  return Math.floor(s / 3600) + ' h ago';
}
function market(spot) { return spot ? 'spot' : 'on-demand'; }
function gpuText(type, count) { return type && type !== 'none' ? (count || 1) + ' × ' + type : '—'; }
function newKey() { return 'ui-' + crypto.randomUUID(); }

// ---------- the API ----------

class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || ('request failed with status ' + status));
    this.status = status; this.code = err.code; this.field = err.field;
    this.suggestions = err.suggestions || []; this.body = body;
  }
}
function token() { return sessionStorage.getItem(TOKEN_KEY); }
async function api(method, path, body, headers = {}) {
  const init = { method, headers: { Authorization: 'Bearer ' + token(), ...headers } };
  if (body !== undefined) { init.body = JSON.stringify(body); init.headers['Content-Type'] = 'application/json'; }
  const res = await fetch(path, init);
  const text = await res.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = null; }
  if (res.status === 401 && path.startsWith('/admin')) { signOut('The admin token was refused; sign in again.'); }
  if (!res.ok) throw new ApiError(res.status, parsed);
  return parsed;
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  try { await readBlocks(reader, onEvent); } finally { reader.cancel().catch(() => {}); }
}
async function readBlocks(reader, onEvent) {
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
    let cut;
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
      let name = 'message'; const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) onEvent(name, data.join('\n'));
    }
  }
}
async function subscribe(path, onEvent, signal) {
  const res = await fetch(path, { headers: { Authorization: 'Bearer ' + token(), Accept: 'text/event-stream' }, signal });
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  await readEvents(res, (name, data) => onEvent(name, JSON.parse(data)));
}

function banner(message) {
  const b = $('#banner');
  b.textContent = message || '';
  b.hidden = !message;
}

// ---------- sign in ----------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  stopAll();
  clearHostSecrets();
  hideNewKey();
  show('signin');
  $('#signin-error').textContent = message || '';
}

$('#signin').addEventListener('submit', async e => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $('#token').value.trim());
  $('#token').value = '';
  await start();
});
$('#sign-out').addEventListener('click', () => signOut(''));

// ---------- views ----------

const views = ['signin', 'fleet', 'node', 'deployments', 'hosts', 'keys', 'usage', 'launches', 'launch', 'chat', 'housekeeping'];
// The open view's live work: its streams and timers stop, and its late answers are dropped,
// the moment another view opens.
let current = null;
function stopAll() {
  if (current) { current.controller.abort(); current.timers.forEach(clearInterval); current = null; }
}
function newView() {
  stopAll();
  const view = { controller: new AbortController(), timers: [] };
  view.signal = view.controller.signal;
  view.alive = () => !view.signal.aborted;
  view.every = (fn, ms) => { if (view.alive()) view.timers.push(setInterval(fn, ms)); };
  current = view;
  return view;
}
function show(name) {
  for (const v of views) $('#view-' + v).hidden = v !== name;
  const signedIn = name !== 'signin';
  $('#nav').hidden = !signedIn; $('#open-launch').hidden = !signedIn; $('#sign-out').hidden = !signedIn;
  const section = { node: 'fleet', launch: 'launches' }[name] || name;
  for (const a of $$('#nav a')) {
    if (a.dataset.view === section) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
}

function route() {
  if (!token()) { show('signin'); return; }
  // In-page anchors (the skip link's #main) are not views.
  if (location.hash && !location.hash.startsWith('#/')) return;
  const [, name, id] = (location.hash.match(/^#\/([a-z]+)(?:\/(.+))?/) || []);
  const open = {
    fleet: v => showFleet(v), node: v => showNode(v, id), deployments: v => showDeployments(v), hosts: v => showHosts(v), keys: v => showKeys(v), usage: v => showUsage(v), launches: v => showLaunches(v),
    launch: v => showLaunch(v, id), chat: v => showChat(v), housekeeping: v => showHousekeeping(v),
  }[name];
  if (!open || (!id && ['node', 'launch'].includes(name))) { location.replace('#/fleet'); return; }
  banner('');
  open(newView());
}
window.addEventListener('hashchange', route);

// Keeps a stream open: reconnects after a pause when it ends or fails, until aborted or, when
// `finished` is given, until it says the stream has nothing more to tell.
function keepSubscribed(path, onEvent, signal, onState, finished = () => false) {
  (async () => {
    while (!signal.aborted && !finished()) {
      try { onState(true); await subscribe(path, onEvent, signal); } catch (e) {
        if (signal.aborted) return;
        if (e instanceof ApiError && e.status === 401) { signOut('The admin token was refused; sign in again.'); return; }
      }
      onState(false);
      if (finished()) return;
      await new Promise(r => setTimeout(r, 2000));
    }
  })();
}

// ---------- fleet ----------

const fleet = new Map();

function healthCell(score) {
  if (score == null) return td('Health', '—');
  const pct = Math.round(score * 100);
  const level = score < 0.5 ? ' low' : score < 0.8 ? ' mid' : '';
  const bar = el('span', { class: 'bar', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '1', 'aria-valuenow': String(score), 'aria-label': 'health ' + score.toFixed(2) },
    width(el('span'), pct + '%'));
  return td('Health', el('span', { class: 'health' + level }, bar, el('span', { text: score.toFixed(2) })));
}

function nodeActions(n) {
  const cell = el('td', { class: 'actions-cell', 'data-label': 'Actions' });
  if (n.status === 'terminated') return cell;
  if (n.status !== 'draining' && n.status !== 'teardown_pending') {
    cell.append(el('button', { type: 'button', class: 'small', text: 'Drain', 'aria-label': 'Drain ' + n.name,
      onclick: () => confirmThen('Drain ' + n.name + '?', 'It stops receiving new requests; requests in flight finish.', 'Drain',
        () => api('POST', '/admin/nodes/' + n.id + '/drain')) }), ' ');
  }
  cell.append(el('button', { type: 'button', class: 'small danger', text: 'Terminate', 'aria-label': 'Terminate ' + n.name,
    onclick: () => confirmThen('Terminate ' + n.name + '?', n.status === 'teardown_pending'
      ? 'A teardown of its VM failed and is being retried; this tries again now.'
      : n.launch_job_id
      ? 'Its VM is shut down and stops billing. This cannot be undone.'
      : 'It is removed from routing and marked terminated (skylaunch did not launch it, so no VM is touched).',
    'Terminate', () => api('DELETE', '/admin/nodes/' + n.id)) }));
  return cell;
}

function renderFleet() {
  const nodes = [...fleet.values()].sort((a, b) => (a.status === 'terminated') - (b.status === 'terminated') || a.name.localeCompare(b.name));
  const rows = nodes.map(n => el('tr', { 'data-node': n.id, 'data-status': n.status },
    td('Name', el('a', { href: '#/node/' + n.id, text: n.name })),
    td('Status', el('span', {}, badge(n.status), n.status_reason ? el('div', { class: 'muted', text: n.status_reason }) : null)),
    healthCell(n.health_score),
    td('Heartbeat', ago(n.last_heartbeat_at), 'heartbeat-age'),
    td('Model', n.model_name),
    td('GPU', gpuText(n.gpu_type, n.gpu_count)),
    td('Market', n.provider === 'local' || n.provider === 'manual' ? '—' : market(n.spot_instance)),
    td('Region', [CLOUD_NAMES[n.provider] || n.provider, placeText(n.region, n.zone)].filter(Boolean).join(' · ')),
    td('Endpoint', n.endpoint_url, 'endpoint'),
    nodeActions(n)));
  const body = $('#fleet-rows');
  keepFocus(body, () => {
    if (rows.length) body.replaceChildren(...rows);
    else body.replaceChildren(el('tr', {}, el('td', { colspan: '10', class: 'muted', text: 'No nodes yet. Click Launch Instance to start one.' })));
  });
  const counts = {};
  for (const n of nodes) counts[n.status] = (counts[n.status] || 0) + 1;
  $('#fleet-summary').textContent = nodes.length
    ? Object.entries(counts).map(([s, c]) => c + ' ' + s).join(', ') : '';
}

function showFleet(view) {
  show('fleet');
  keepSubscribed('/admin/nodes/events', (kind, data) => {
    if (kind === 'snapshot') { fleet.clear(); for (const n of data.nodes) fleet.set(n.id, n); }
    else if (kind === 'nodes') { for (const n of data.nodes) fleet.set(n.id, n); }
    renderFleet();
  }, view.signal, up => { const l = $('#fleet-live'); l.textContent = up ? 'live' : 'reconnecting…'; l.classList.toggle('off', !up); });
  // Heartbeat ages tick between updates.
  view.every(() => { for (const row of $$('#fleet-rows tr[data-node]')) { const n = fleet.get(row.dataset.node); const c = $('.heartbeat-age', row); if (n && c) c.textContent = ago(n.last_heartbeat_at); } }, 1000);
}

// ---------- node detail ----------

async function showNode(view, id) {
  show('node');
  const render = async () => {
    let n;
    try { n = await api('GET', '/admin/nodes/' + encodeURIComponent(id)); } catch (e) { if (view.alive()) banner(e.message); return; }
    if (!view.alive()) return;
    $('#node-title').replaceChildren(n.name + ' ', badge(n.status));
    const facts = [
      ['Status reason', n.status_reason], ['Model', n.model_name], ['Endpoint', n.endpoint_url],
      ['Provider', n.provider], ['Region / zone', [n.region, n.zone].filter(Boolean).join(' / ')],
      ['GPU', gpuText(n.gpu_type, n.gpu_count)], ['Instance type', n.instance_type], ['Market', market(n.spot_instance)],
      ['Health score', n.health_score == null ? null : n.health_score.toFixed(2)], ['Last heartbeat', n.last_heartbeat_at ? dateTime(n.last_heartbeat_at) + ' (' + ago(n.last_heartbeat_at) + ')' : null],
      ['Agent', n.agent_version], ['Node id', n.id],
    ];
    const hb = n.last_heartbeat || {};
    if (hb.gpu && hb.gpu.present) facts.push(['GPU now', [hb.gpu.utilization_pct != null && hb.gpu.utilization_pct + '% busy', hb.gpu.memory_used_mib != null && Math.round(hb.gpu.memory_used_mib) + ' / ' + Math.round(hb.gpu.memory_total_mib) + ' MiB', hb.gpu.temperature_c != null && hb.gpu.temperature_c + ' °C'].filter(Boolean).join(', ')]);
    if (hb.queue) facts.push(['Requests', (hb.queue.running ?? 0) + ' running, ' + (hb.queue.waiting ?? 0) + ' waiting']);
    $('#node-facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v ?? '—' })]));
    const actions = $('#node-actions');
    keepFocus(actions, () => {
      actions.replaceChildren();
      if (n.launch_job_id) actions.append(el('a', { href: '#/launch/' + n.launch_job_id, text: 'Its launch' }));
      if (n.status !== 'terminated') actions.append(...nodeActions(n).childNodes);
    });
    const events = n.events || [];
    $('#node-events').replaceChildren(...(events.length ? events.map(ev => el('li', {},
      el('span', { class: 'muted', text: dateTime(ev.at) + ' ' }),
      el('strong', { text: ev.from_status && ev.to_status ? ev.from_status + ' → ' + ev.to_status : ev.kind }),
      ' ', ev.reason)) : [el('li', { class: 'muted', text: 'No events yet.' })]));
  };
  await render();
  view.every(render, 3000);
}

// ---------- confirmations ----------

function confirmThen(title, text, verb, action) {
  const dialog = $('#confirm-dialog');
  const opener = focusKey(document.activeElement);
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  $('#confirm-yes').textContent = verb;
  dialog.returnValue = '';
  dialog.showModal();
  dialog.addEventListener('close', async () => {
    // The control that opened the dialog may have been re-rendered meanwhile: find its twin.
    refocus($('#main'), opener);
    if (dialog.returnValue !== 'yes') return;
    try { await action(); banner(''); } catch (e) { banner(e.message); }
    if (location.hash.startsWith('#/node/')) route();
  }, { once: true });
}

// ---------- deployments ----------

const OPEN_ACTION_STATES = ['pending', 'approved', 'running'];
const ACTION_KINDS = { launch_replica: 'Launch replica', replace_replica: 'Replace replica', drain_replica: 'Drain replica', terminate_replica: 'Terminate replica' };
const DRIFTS = { missing_replica: 'missing replica', unhealthy_replica: 'unhealthy replica', spot_interruption: 'spot interruption', outdated_revision: 'outdated revision', excess_replica: 'excess replica',
  scale_up: '▲ autoscale: scale up', scale_down: '▼ autoscale: scale down' };
const FINISHED_ACTION_STATES = ['completed', 'failed', 'rejected', 'cancelled'];
// How many of an autoscaled deployment's finished scaling actions its card keeps showing.
const RECENT_SCALING = 6;
// Nothing happens while the metric is within this fraction of its target (the API's band).
const SCALE_BAND = 0.10;
// Statuses whose reason says what is wrong.
const TROUBLED = ['unsatisfiable', 'rollout_failed', 'degraded'];

// What an operator typed in a Scale box outlives the refresh that re-renders its card.
const scaleDrafts = new Map();
// Each card as last rendered, with the data it showed: an unchanged card is left alone.
const deploymentCards = new Map();
let refreshDeployments = async () => {};

function marketText(m) { return m === 'spot' ? 'spot' : m === 'on_demand' ? 'on-demand' : '—'; }
function usdPerHour(usd) { return '$' + (usd || 0).toFixed(2) + '/h'; }
function slotText(slot) { return slot == null ? '—' : String(slot); }

// A call from a deployment's card; the view refreshes once it is answered, whatever the answer.
async function andRefresh(call) {
  try { return await call; } finally { await refreshDeployments(); }
}
// The same, its error shown in the banner (confirmThen does that for the calls it makes).
async function deploymentCall(method, path, body) {
  try { const r = await andRefresh(api(method, path, body)); banner(''); return r; } catch (e) { banner(e.message); return null; }
}

// Approve or reject: one decision per action, so both buttons wait until it is answered.
async function decide(button, id, verb) {
  const buttons = $$('button', button.closest('td'));
  for (const b of buttons) b.disabled = true;
  if (!await deploymentCall('POST', '/admin/actions/' + encodeURIComponent(id) + '/' + verb)) for (const b of buttons) b.disabled = false;
}

// Scale to zero: a deployment with no replica wanted reads as scaled to zero (not as broken), and
// one whose first replica is being launched for requests held at zero as a cold start. A cold
// start is in progress while requests wait, or while the last decision is the 0 → 1 of a cold
// start and no replica is ready yet.
function coldStart(d) {
  const a = d.autoscale;
  if (!a || d.status === 'deleting') return null;
  const waiting = a.waiting_requests || 0;
  const last = a.last_decision;
  const waking = last && last.from === 0 && last.to >= 1 && /cold start/.test(last.reason || '') && d.replicas.ready === 0;
  return waiting > 0 || waking ? { waiting } : null;
}
function scaledToZero(d) {
  return d.replicas.desired === 0 && !['deleting', 'unsatisfiable', 'rollout_failed'].includes(d.status) && !coldStart(d);
}
function waitingText(n) { return n === 0 ? 'no requests waiting' : n + (n === 1 ? ' request' : ' requests') + ' waiting'; }
function zeroBlock(d) {
  const cold = coldStart(d);
  if (cold) {
    const timeout = (d.spec.autoscale || {}).cold_start_timeout_s;
    return el('p', { class: 'cold-start', role: 'status', 'data-waiting': String(cold.waiting) },
      el('strong', { text: 'Cold start in progress: ' + waitingText(cold.waiting) }),
      el('span', { class: 'muted', text: ' · a replica is being launched; requests are held until it is ready'
        + (timeout == null ? '' : ' (at most ' + timeout + ' s)') + ', beyond the bound they get 503 cold_start_busy' }));
  }
  if (scaledToZero(d)) {
    return el('p', { class: 'scaled-to-zero' },
      el('strong', { text: 'Scaled to zero' }),
      el('span', { class: 'muted', text: d.autoscale && d.autoscale.min_replicas === 0
        ? ' · no replica runs and none costs; the next request starts one (a cold start)'
        : ' · no replica runs; scale up to serve it again' }));
  }
  return null;
}

function deploymentStatus(d) {
  // At zero replicas, or waking from zero, the state says so in place of serving/converging/degraded.
  if (coldStart(d) && !['unsatisfiable', 'rollout_failed'].includes(d.status)) {
    return el('div', { class: 'deployment-status' }, el('span', { class: 'badge s-cold-start', text: 'cold start' }));
  }
  if (scaledToZero(d)) return el('div', { class: 'deployment-status' }, el('span', { class: 'badge s-scaled-to-zero', text: 'scaled to zero' }));
  const box = el('div', { class: 'deployment-status' }, badge(d.status));
  if (TROUBLED.includes(d.status) && d.reason) box.append(' ', el('span', { class: 'reason', text: d.reason }));
  if (d.status === 'unsatisfiable' && d.unsatisfiable_until) box.append(' ', el('span', { class: 'muted retry-at', text: 'retry at ' + time(d.unsatisfiable_until) }));
  return box;
}

// Its replicas side by side by revision, newest first: a rollout shows the old beside the new.
function replicaGroups(d) {
  const byRevision = new Map();
  if (d.replicas.desired > 0) byRevision.set(d.revision, []);
  for (const n of d.nodes) {
    const r = n.revision ?? 0;
    if (!byRevision.has(r)) byRevision.set(r, []);
    byRevision.get(r).push(n);
  }
  const revisions = [...byRevision.keys()].sort((a, b) => b - a);
  if (!revisions.length) return el('p', { class: 'muted', text: d.replicas.desired === 0 ? 'No replicas: scaled to zero.' : 'No replicas.' });
  return el('div', { class: 'revisions' }, revisions.map(r => {
    const isCurrent = r === d.revision;
    const nodes = byRevision.get(r);
    return el('section', { class: 'revision' + (isCurrent ? ' current' : ' old'), 'data-revision': String(r), 'aria-label': 'Revision ' + r },
      el('h3', { text: 'Revision ' + r + (isCurrent ? ' (current)' : ' (old)') }),
      nodes.length ? el('table', { class: 'responsive' },
        el('thead', {}, el('tr', {}, ['Slot', 'Replica', 'Status', 'Market', 'Health'].map(h => el('th', { text: h })))),
        el('tbody', {}, nodes.map(n => el('tr', { 'data-node': n.node_id, 'data-status': n.status },
          td('Slot', slotText(n.slot)), td('Replica', el('a', { href: '#/node/' + encodeURIComponent(n.node_id), text: n.name })),
          td('Status', badge(n.status)), td('Market', marketText(n.market)),
          td('Health', n.health_score == null ? '—' : n.health_score.toFixed(2))))))
        : el('p', { class: 'muted', text: 'No replica yet.' }));
  }));
}

function rolloutProgress(d) {
  if (!d.nodes.some(n => n.revision !== d.revision)) return null;
  const done = d.nodes.filter(n => n.revision === d.revision && n.status === 'ready').length;
  const want = d.replicas.desired;
  return el('p', { class: 'rollout' },
    el('progress', { max: String(Math.max(want, 1)), value: String(Math.min(done, want)), 'aria-hidden': 'true' }),
    el('span', { text: ' Rollout to revision ' + d.revision + ': ' + done + ' of ' + want + ' replicas on the new revision' }));
}

function actionTable(actions, empty = 'No actions in progress.') {
  if (!actions.length) return el('p', { class: 'muted', text: empty });
  const rows = actions.map(a => {
    const label = (ACTION_KINDS[a.kind] || a.kind) + (a.slot == null ? '' : ' (slot ' + a.slot + ')');
    const buttons = el('td', { class: 'actions-cell', 'data-label': 'Decision' });
    if (a.state === 'pending') {
      buttons.append(
        el('button', { type: 'button', class: 'small primary', text: 'Approve', 'aria-label': 'Approve ' + label,
          onclick: e => decide(e.currentTarget, a.id, 'approve') }), ' ',
        el('button', { type: 'button', class: 'small danger', text: 'Reject', 'aria-label': 'Reject ' + label,
          onclick: e => decide(e.currentTarget, a.id, 'reject') }));
    }
    const scaling = a.drift === 'scale_up' ? ' scale-up' : a.drift === 'scale_down' ? ' scale-down' : '';
    return el('tr', { 'data-action': a.id, 'data-state': a.state, 'data-kind': a.kind, 'data-drift': a.drift, class: scaling ? 'scaling' + scaling : null },
      td('When', time(a.created_at)), td('Action', label), td('Why', DRIFTS[a.drift] || a.drift, 'why'),
      td('Market', marketText(a.market)), td('State', badge(a.state)),
      td('Details', [a.risk === 'guarded' && a.state === 'pending' ? 'waits for approval' : null, a.reason].filter(Boolean).join(': ') || null, 'muted'),
      buttons);
  });
  return el('div', { class: 'table-wrap' }, el('table', { class: 'responsive' },
    el('thead', {}, el('tr', {}, ['When', 'Action', 'Why', 'Market', 'State', 'Details', ''].map(h => el('th', {}, h ? h : el('span', { class: 'sr-only', text: 'Decision' }))))),
    el('tbody', {}, rows)));
}

function deploymentControls(d) {
  const controls = el('div', { class: 'actions' });
  if (d.status === 'deleting') return controls;
  const input = el('input', { type: 'number', min: '0', max: '100', step: '1', class: 'scale-input', 'aria-label': 'Replicas of ' + d.name });
  if (d.autoscale) {
    input.min = String(d.autoscale.min_replicas); input.max = String(d.autoscale.max_replicas);
    input.title = 'The autoscaler moves this count between ' + d.autoscale.min_replicas + ' and ' + d.autoscale.max_replicas + '.';
  }
  input.value = scaleDrafts.get(d.name) ?? String(d.replicas.desired);
  input.addEventListener('input', () => scaleDrafts.set(d.name, input.value));
  controls.append(el('form', { class: 'scale', onsubmit: async e => {
    e.preventDefault();
    const replicas = Number(input.value);
    if (input.value.trim() === '' || !Number.isInteger(replicas) || replicas < 0) { banner('Replicas must be a whole number, 0 or more.'); return; }
    if (await deploymentCall('POST', '/admin/deployments/' + encodeURIComponent(d.name) + '/scale', { replicas })) scaleDrafts.delete(d.name);
  } }, input, ' ', el('button', { class: 'small', text: 'Scale', 'aria-label': 'Scale ' + d.name })));
  if (d.status === 'unsatisfiable' || d.status === 'rollout_failed') {
    controls.append(el('button', { type: 'button', class: 'small', text: 'Retry', 'aria-label': 'Retry ' + d.name,
      onclick: () => deploymentCall('POST', '/admin/deployments/' + encodeURIComponent(d.name) + '/retry') }));
  }
  if (d.revision > 1) {
    controls.append(el('button', { type: 'button', class: 'small', text: 'Roll back', 'aria-label': 'Roll back ' + d.name,
      onclick: () => confirmThen('Roll back ' + d.name + '?', 'A new revision runs what revision ' + (d.revision - 1) + ' ran; its replicas are replaced one by one.', 'Roll back',
        () => andRefresh(api('POST', '/admin/deployments/' + encodeURIComponent(d.name) + '/rollback'))) }));
  }
  controls.append(el('button', { type: 'button', class: 'small danger', text: 'Delete', 'aria-label': 'Delete ' + d.name,
    onclick: () => confirmThen('Delete ' + d.name + '?', 'Its ' + d.nodes.length + ' replica(s) are drained and their VMs shut down; then the deployment disappears. This cannot be undone.', 'Delete',
      () => andRefresh(api('DELETE', '/admin/deployments/' + encodeURIComponent(d.name)))) }));
  return controls;
}

// The metric as the autoscaler reads it: "in_flight 3.50 per replica", "ttft 0.80 s".
function metricAmount(metric, v) { return v == null ? '—' : metric === 'ttft' ? v.toFixed(2) + ' s' : v.toFixed(2); }
function metricText(metric, v) { return metric + ' ' + metricAmount(metric, v) + (metric === 'ttft' || v == null ? '' : ' per replica'); }
// Where the value stands against the target: above or below the band (where the autoscaler
// acts, once its delay has passed), within it, or not measured yet.
function scaleBand(a) {
  if (a.value == null) return 'unmeasured';
  const ratio = a.value / a.target;
  return ratio > 1 + SCALE_BAND ? 'above' : ratio < 1 - SCALE_BAND ? 'below' : 'within';
}
function bandText(band, a, d) {
  const policy = d.spec.autoscale || {};
  const desired = d.replicas.desired;
  if (band === 'above') return desired >= a.max_replicas ? '▲ above the target, at the maximum'
    : '▲ above the target: replicas are added after ' + (policy.scale_up_delay_s ?? 30) + ' s above it';
  // A low value never takes a deployment below one replica: only idling takes it to zero.
  if (band === 'below') return a.stale ? '▼ below the target, but no scale-down while reports are stale'
    : a.kv_cache_full ? '▼ below the target, but no scale-down while a KV cache is nearly full'
    : desired <= Math.max(a.min_replicas, 1) ? (a.min_replicas === 0 ? '▼ below the target; only idling takes it to zero' : '▼ below the target, at the minimum')
    : '▼ below the target: a replica is removed after ' + (policy.scale_down_delay_s ?? 300) + ' s below it';
  if (band === 'within') return '● within 10% of the target';
  if (d.replicas.desired === 0) return 'nothing to measure: scaled to zero';
  return d.replicas.ready === 0 ? 'nothing to measure: no ready replica' : 'not measured yet';
}

function autoscaleBlock(d, recent) {
  const a = d.autoscale;
  const policy = d.spec.autoscale || {};
  const band = scaleBand(a);
  const metric = el('p', { class: 'autoscale-metric' },
    el('span', { class: 'autoscale-value', text: metricText(a.metric, a.value) }),
    el('span', { class: 'muted', text: ' / ' }),
    el('span', { class: 'autoscale-target', text: 'target ' + metricAmount(a.metric, a.target) }), ' ',
    el('span', { class: 'band band-' + band, text: bandText(band, a, d) }),
    a.stale ? el('span', { class: 'badge s-stale', text: 'stale', title: "Some replica's reports are stale: no scale-down until they are fresh." }) : null,
    a.kv_cache_full ? el('span', { class: 'badge s-kv-full', text: 'KV cache full', title: 'A ready replica reports its KV cache at least 90 % full: no scale-down while it does.' }) : null);
  const range = el('p', { class: 'autoscale-range' },
    el('span', { text: a.min_replicas + '–' + a.max_replicas + ' replicas' }),
    el('span', { class: 'muted', text: ' · now ' + d.replicas.desired + ' · averaged over ' + (policy.window_s ?? 60) + ' s · up after ' + (policy.scale_up_delay_s ?? 30) + ' s above, down after ' + (policy.scale_down_delay_s ?? 300) + ' s below'
      + (a.min_replicas === 0 ? ' · to zero after ' + (policy.scale_to_zero_after_s ?? 300) + ' s without a request' : '') }));
  const last = a.last_decision;
  const decision = last
    ? el('p', { class: 'autoscale-decision' + (last.to > last.from ? ' up' : ' down'), 'data-from': String(last.from), 'data-to': String(last.to) },
      el('span', { class: 'muted', text: 'Last decision ' }),
      el('strong', { class: 'decision-change', text: last.from + ' → ' + last.to }),
      el('span', { class: 'muted decision-at', text: ' at ' + time(last.at), title: dateTime(last.at) }),
      el('span', { class: 'decision-reason', text: ': ' + last.reason }))
    : el('p', { class: 'autoscale-decision muted', text: 'No scaling decision yet.' });
  return el('section', { class: 'autoscale', 'aria-label': 'Autoscale of ' + d.name, 'data-band': band, 'data-stale': String(a.stale),
    'data-value': a.value == null ? null : String(a.value), 'data-target': String(a.target) },
    el('h3', { text: 'Autoscale on ' + a.metric }), metric, range, decision,
    el('h4', { text: 'Recent scaling, newest first' }),
    actionTable(recent, 'No scaling action has finished yet.'));
}

function deploymentCard(d, actions, recent) {
  const s = d.spec;
  const where = s.cloud ? CLOUD_NAMES[s.cloud] || s.cloud : { skypilot: 'SkyPilot', aws: 'AWS', azure: 'Azure' }[s.provider] || s.provider;
  const runsOn = s.provider === 'local' ? 'this machine' : gpuText(s.gpu, s.gpu_count) + ' · ' + where;
  const facts = [
    ['Ready', d.replicas.ready + '/' + d.replicas.desired, 'fact-ready'],
    ['Revision', String(d.revision), 'fact-revision'],
    ['Estimated', usdPerHour(d.hourly_usd), 'fact-cost'],
    ['Model', s.model, 'fact-model'],
    ['Runs on', runsOn + (s.spot && s.spot.use_spot ? ', spot' : ''), null],
  ];
  const routing = (s.routing || {}).policy;
  if (routing && routing !== 'least_load') {
    facts.push(['Routing', routing === 'session' ? 'session (' + (s.routing.session_header || 'X-Session-Id') + ')' : 'prefix affinity', 'fact-routing']);
  }
  if (d.replicas.launching) facts.push(['Launching', String(d.replicas.launching), null]);
  if (d.replicas.draining) facts.push(['Draining', String(d.replicas.draining), null]);
  const cold = coldStart(d);
  return el('article', { class: 'deployment card', 'data-deployment': d.name, 'data-status': d.status, 'data-revision': String(d.revision),
    'data-ready': String(d.replicas.ready), 'data-desired': String(d.replicas.desired),
    'data-zero': cold ? 'cold-start' : scaledToZero(d) ? 'scaled-to-zero' : null,
    'data-waiting': d.autoscale ? String(d.autoscale.waiting_requests || 0) : null, 'aria-labelledby': 'deployment-' + d.name },
    el('div', { class: 'deployment-head' }, el('h2', { id: 'deployment-' + d.name, text: d.name }), deploymentStatus(d)),
    zeroBlock(d),
    el('dl', { class: 'deployment-facts' }, facts.map(([k, v, cls]) => el('div', { class: cls }, el('dt', { text: k }), el('dd', { text: v })))),
    deploymentControls(d),
    d.autoscale ? autoscaleBlock(d, recent || []) : null,
    rolloutProgress(d),
    replicaGroups(d),
    el('h3', { text: 'Actions in progress' + (d.pending_actions ? ' · ' + d.pending_actions + ' waiting for approval' : '') }),
    actionTable(actions));
}

function renderDeployments(deployments, actions, scaling = new Map()) {
  const list = $('#deployment-list');
  if (!deployments.length) {
    deploymentCards.clear();
    list.replaceChildren(el('p', { class: 'muted', text: 'No deployments yet. Create one with New deployment.' }));
    return;
  }
  const cards = deployments.map(d => {
    // A scaling action that finished between the two reads is shown once, finished (its later read).
    const recent = scaling.get(d.name) || [];
    const finished = new Set(recent.map(a => a.id));
    // By name alone: a deleted deployment's actions go with it. (Not by time either: an action
    // can carry the time of the reconciler pass that began just before its deployment existed.)
    const mine = actions.filter(a => a.deployment === d.name && !finished.has(a.id))
      .sort((a, b) => new Date(b.created_at) - new Date(a.created_at) || b.id.localeCompare(a.id));
    // Heartbeat times are not shown: they alone do not re-render a card.
    const data = JSON.stringify([d, mine, recent], (k, v) => k === 'last_heartbeat_at' ? undefined : v);
    const old = deploymentCards.get(d.name);
    if (old && old.data === data) return old.card;
    const card = deploymentCard(d, mine, recent);
    deploymentCards.set(d.name, { data, card });
    return card;
  });
  for (const name of [...deploymentCards.keys()]) if (!deployments.some(d => d.name === name)) deploymentCards.delete(name);
  const shown = [...list.children];
  const sameOrder = shown.length === cards.length && shown.every((c, i) => c.dataset.deployment === cards[i].dataset.deployment);
  if (sameOrder) {
    // Only the cards that changed are replaced, so focus and typing elsewhere are undisturbed.
    cards.forEach((card, i) => { if (shown[i] !== card) keepFocus(list, () => shown[i].replaceWith(card)); });
  } else {
    keepFocus(list, () => list.replaceChildren(...cards));
  }
}

async function showDeployments(view) {
  show('deployments');
  refreshDeploymentForm(); refreshAutoscaleFields();
  let started = 0, shown = 0;
  const load = async () => {
    const mine = ++started;
    let deployments, actions;
    const scaling = new Map();
    try {
      const [list, ...open] = await Promise.all([api('GET', '/admin/deployments'),
        ...OPEN_ACTION_STATES.map(s => api('GET', '/admin/actions?state=' + s))]);
      deployments = list.deployments; actions = open.flatMap(o => o.actions);
      // An autoscaled deployment's finished scaling actions stay in view after they are done
      // (the open ones are among its actions in progress). One deleted meanwhile has none.
      await Promise.all(deployments.filter(d => d.autoscale).map(async d => {
        let all;
        try { all = (await api('GET', '/admin/deployments/' + encodeURIComponent(d.name) + '/actions')).actions; } catch (e) {
          if (e instanceof ApiError && e.status === 404) return;
          throw e;
        }
        scaling.set(d.name, all.filter(a => (a.drift === 'scale_up' || a.drift === 'scale_down') && FINISHED_ACTION_STATES.includes(a.state))
          .sort((a, b) => new Date(b.created_at) - new Date(a.created_at) || b.id.localeCompare(a.id)).slice(0, RECENT_SCALING));
      }));
    } catch (e) { if (view.alive()) banner(e.message); return; }
    // An answer older than one already shown is dropped (a slow poll must not undo a newer view).
    if (!view.alive() || mine < shown) return;
    shown = mine;
    renderDeployments(deployments, actions, scaling);
  };
  refreshDeployments = load;
  deploymentCards.clear(); scaleDrafts.clear();
  $('#deployment-list').replaceChildren();
  await load();
  // Polled while the view is open and the tab is visible.
  view.every(() => { if (!document.hidden) load(); }, 2000);
}
document.addEventListener('visibilitychange', () => {
  if (document.hidden || !current) return;
  if (!$('#view-deployments').hidden) refreshDeployments();
  else if (!$('#view-hosts').hidden) refreshHosts();
  else if (!$('#view-usage').hidden) refreshUsage();
});

// ---------- the new deployment form ----------

const deploymentForm = $('#deployment-form');

function refreshDeploymentForm() {
  if (!catalog) return;
  const f = deploymentForm;
  for (const option of f.provider.options) option.hidden = option.disabled = !catalog.providers.includes(option.value);
  if (f.provider.selectedOptions[0] && f.provider.selectedOptions[0].disabled) {
    const first = [...f.provider.options].find(o => !o.disabled);
    if (first) f.provider.value = first.value;
  }
  const provider = f.provider.value;
  for (const part of $$('[data-for-providers]', f)) part.hidden = !part.dataset.forProviders.split(' ').includes(provider);
  const gpus = catalog.gpus.filter(g => provider === 'aws' || provider === 'azure' ? g.clouds.includes(provider) : true);
  fillSelect(f.gpu, gpus.map(g => [g.name, g.name + ' (' + g.memory_gb + ' GB)']));
}
// The autoscale part shows when its box is checked; its scale-to-zero settings when the
// minimum is 0.
function refreshAutoscaleFields() {
  const f = deploymentForm.elements;
  $('#df-autoscale-fields').hidden = !f['autoscale'].checked;
  $('#df-autoscale-zero').hidden = f['autoscale.min_replicas'].value.trim() !== '0';
}
// The slot of the field an error names ("autoscale.min_replicas"), else of its top-level part
// ("envs" for "envs.HF_TOKEN"), else the form's own.
function deploymentErrorSlot(field) {
  const f = field || '';
  const top = f.split(/[.[]/)[0];
  const slot = name => name && $('[data-error-for="' + CSS.escape(name) + '"]', deploymentForm);
  return slot(f) || slot(top) || slot('_form');
}
function deploymentInput(field) {
  const f = field || '';
  return deploymentForm.elements[f] || deploymentForm.elements[f.split(/[.[]/)[0]];
}
function clearDeploymentErrors() { for (const e of $$('[data-error-for]', deploymentForm)) e.replaceChildren(); }
function showDeploymentError(err) {
  clearDeploymentErrors();
  deploymentErrorSlot(err.field).replaceChildren(errorBox(err, s => applyDeploymentSuggestion(err.field, s)));
  const input = deploymentInput(err.field);
  if (input && input.focus && !input.closest('[hidden]')) input.focus();
}
function applyDeploymentSuggestion(field, suggestion) {
  const f = deploymentForm;
  const pair = suggestion.match(/^([\w.]+): (.+)$/);
  if (pair && f.elements[pair[1]]) { field = pair[1]; suggestion = pair[2]; }
  const input = f.elements[field];
  if (!input || input.type === 'checkbox' || input.tagName === 'TEXTAREA') return;
  if (input.tagName === 'SELECT' && ![...input.options].some(o => o.value === suggestion)) input.append(el('option', { value: suggestion, text: suggestion }));
  input.value = suggestion;
  if (field === 'provider') { refreshDeploymentForm(); f.provider.value = suggestion; }
  refreshAutoscaleFields();
  deploymentErrorSlot(field).replaceChildren();
}
deploymentForm.addEventListener('change', e => {
  if (e.target.name === 'provider') refreshDeploymentForm();
  if (e.target.name === 'autoscale') refreshAutoscaleFields();
});
// "KEY=value" lines (blank ones skipped) as the spec's envs.
function parseEnvs(text) {
  const envs = {};
  for (const line of text.split('\n').map(l => l.trim()).filter(Boolean)) {
    const at = line.indexOf('=');
    if (at < 0) return { error: 'Write one KEY=value a line ("' + line + '" has no =).' };
    if (at === 0) return { error: 'Write one KEY=value a line (one starts with = and has no KEY).' };
    envs[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  return { envs };
}
// The form's autoscale part as the spec's policy; the delays left empty take the API's defaults.
// Ranges are the API's to check (it says why, next to the field).
function autoscaleBody(f) {
  const input = name => f.elements['autoscale.' + name];
  const policy = { metric: input('metric').value };
  for (const [key, what] of [['min_replicas', 'The minimum'], ['max_replicas', 'The maximum']]) {
    const n = wholeNumber(input(key).value.trim(), 0, 1000000);
    if (n == null) return { error: { field: 'autoscale.' + key, message: what + ' must be a whole number of replicas.' } };
    policy[key] = n;
  }
  const target = input('target').value.trim();
  if (target === '' || !Number.isFinite(Number(target))) return { error: { field: 'autoscale.target', message: 'The target must be a number (per replica; seconds for ttft).' } };
  policy.target = Number(target);
  const delays = ['scale_up_delay_s', 'scale_down_delay_s', 'window_s'];
  // Scaling to zero's settings go only with a minimum of 0.
  if (policy.min_replicas === 0) delays.push('scale_to_zero_after_s', 'cold_start_timeout_s');
  for (const key of delays) {
    const text = input(key).value.trim();
    if (text === '') continue;
    const n = wholeNumber(text, 0, 1000000);
    if (n == null) return { error: { field: 'autoscale.' + key, message: 'A delay must be a whole number of seconds, or empty for the default.' } };
    policy[key] = n;
  }
  return { policy };
}
// An error goes as soon as its field is edited, not when it loses focus: a form that shrinks
// under the pointer would swallow the click on Create.
deploymentForm.addEventListener('input', e => {
  if (e.target.name) deploymentErrorSlot(e.target.name).replaceChildren();
  if (e.target.name === 'autoscale.min_replicas') refreshAutoscaleFields();
});
deploymentForm.addEventListener('submit', async e => {
  e.preventDefault();
  clearDeploymentErrors();
  const f = deploymentForm;
  const replicas = Number(f.replicas.value);
  if (f.replicas.value.trim() === '' || !Number.isInteger(replicas) || replicas < 0) {
    showDeploymentError({ field: 'replicas', message: 'Replicas must be a whole number, 0 or more.' }); return;
  }
  const body = { name: f.elements['name'].value.trim(), model: f.model.value.trim(), provider: f.provider.value, replicas };
  if (body.provider !== 'local') {
    body.gpu = f.gpu.value;
    body.spot = { use_spot: f.use_spot.checked };
  }
  const envs = parseEnvs(f.envs.value);
  if (envs.error) { showDeploymentError({ field: 'envs', message: envs.error }); return; }
  if (Object.keys(envs.envs).length) body.envs = envs.envs;
  if (f.elements['autoscale'].checked) {
    const autoscale = autoscaleBody(f);
    if (autoscale.error) { showDeploymentError(autoscale.error); return; }
    body.autoscale = autoscale.policy;
  }
  const submit = $('#deployment-submit');
  submit.disabled = true;
  try {
    await api('POST', '/admin/deployments', body);
    f.reset(); refreshDeploymentForm(); refreshAutoscaleFields();
    $('#new-deployment').open = false;
    banner('');
    await refreshDeployments();
  } catch (err) {
    showDeploymentError(err instanceof ApiError ? err : { message: 'cannot reach the control plane: ' + err.message });
  } finally { submit.disabled = false; }
});

// ---------- hosts ----------

const HOST_BUSY = ['pending', 'probing'];
const HOST_HELD = ['in_use', 'teardown_pending'];
const AUTH_KINDS = { private_key: 'private key', password: 'password' };
const HOST_EVENT_KINDS = {
  added: 'Added', probing: 'Probing', probed: 'Probed', probe_failed: 'Probe failed', host_key_learnt: 'Host key learnt',
  host_key_mismatch: 'Host key mismatch', claimed: 'Claimed', released: 'Released', teardown_failed: 'Teardown failed',
};
const HOST_COLUMNS = 9;

// Each host's rows as last rendered, with the data they showed: unchanged rows are left alone.
const hostRows = new Map();
// The hosts whose events are open, and those events as last fetched.
const openHostEvents = new Set();
const hostEvents = new Map();
let shownHosts = [];
let refreshHosts = async () => {};

function hostAddress(h) { return (h.address.includes(':') && !h.address.startsWith('[') ? '[' + h.address + ']' : h.address) + ':' + h.port; }
function gbText(gb) { return (gb < 10 ? gb.toFixed(1) : String(Math.round(gb))) + ' GB'; }
// What the probe found: "2 × NVIDIA L4 (22 GB)", "no GPU", or null before a probe.
function probeGpus(probe) {
  if (!probe) return null;
  if (!probe.gpus.length) return 'no GPU';
  const counts = new Map();
  for (const g of probe.gpus) {
    const name = g.name + ' (' + Math.round(g.memory_mb / 1024) + ' GB)';
    counts.set(name, (counts.get(name) || 0) + 1);
  }
  return [...counts].map(([name, n]) => n + ' × ' + name).join(', ');
}

function hostStatus(h) {
  const box = el('div', { class: 'host-status' }, badge(h.status));
  if (h.reason) box.append(el('div', { class: 'host-reason' + (h.status === 'error' || h.status === 'teardown_pending' ? ' bad' : ' muted'), text: h.reason }));
  return td('Status', box);
}

function hostSystem(p) {
  if (!p) return td('System', '—');
  return td('System', el('div', {},
    el('div', { class: 'host-os', text: p.os + (p.arch ? ' · ' + p.arch : '') }),
    el('div', { class: 'muted', text: 'kernel ' + p.kernel }),
    el('div', { class: 'host-disk', text: gbText(p.disk_free_gb) + ' free' }),
    el('div', { class: 'host-systemd', text: p.systemd ? 'systemd' : 'no systemd' })));
}

// A call from a host's row; the view refreshes once it is answered, whatever the answer.
async function andRefreshHosts(call) {
  try { return await call; } finally { await refreshHosts(); }
}
async function hostCall(button, method, path) {
  button.disabled = true;
  try { await andRefreshHosts(api(method, path)); banner(''); } catch (e) { banner(e.message); button.disabled = false; }
}

function toggleHostEvents(id) {
  if (openHostEvents.has(id)) { openHostEvents.delete(id); hostEvents.delete(id); } else openHostEvents.add(id);
  renderHosts(shownHosts);
  refreshHosts();
}

function hostActions(h) {
  const held = HOST_HELD.includes(h.status);
  const busy = HOST_BUSY.includes(h.status);
  const open = openHostEvents.has(h.id);
  const heldNote = held ? 'A launch holds this host' + (h.job_id ? ' (' + h.job_id + ')' : '') : null;
  const path = '/admin/hosts/' + encodeURIComponent(h.id);
  return el('td', { class: 'actions-cell', 'data-label': 'Actions' },
    el('button', { type: 'button', class: 'small', text: 'Probe again', 'aria-label': 'Probe ' + h.name + ' again',
      disabled: held || busy, title: heldNote, onclick: e => hostCall(e.currentTarget, 'POST', path + '/probe') }), ' ',
    el('button', { type: 'button', class: 'small', text: open ? 'Hide events' : 'Events', 'aria-label': 'Events of ' + h.name,
      'aria-expanded': String(open), 'aria-controls': open ? 'host-events-' + h.id : null, onclick: () => toggleHostEvents(h.id) }), ' ',
    el('button', { type: 'button', class: 'small danger', text: 'Remove', 'aria-label': 'Remove ' + h.name, disabled: held, title: heldNote,
      onclick: () => confirmThen('Remove ' + h.name + '?', 'skylaunch forgets the host and its sealed credentials; launches can no longer use it. Nothing on the machine is touched.', 'Remove',
        () => andRefreshHosts(api('DELETE', path))) }));
}

function hostRow(h) {
  const labels = Object.entries(h.labels || {}).map(([k, v]) => k + '=' + v).join(', ');
  return el('tr', { 'data-host': h.id, 'data-name': h.name, 'data-status': h.status, 'data-updated': h.updated_at },
    td('Name', el('div', {}, el('strong', { text: h.name }), labels ? el('div', { class: 'muted host-labels', text: labels }) : null)),
    td('Address', hostAddress(h), 'host-address'),
    td('Login', el('div', {}, el('div', { text: h.user }), el('div', { class: 'muted host-auth', text: AUTH_KINDS[h.auth] || h.auth }))),
    hostStatus(h),
    td('GPUs', el('div', {}, el('div', { class: 'host-gpus', text: probeGpus(h.probe) ?? '—' }),
      h.gpu_type ? el('div', { class: 'muted', text: 'launches match ' + gpuText(h.gpu_type, h.gpu_count) }) : null)),
    hostSystem(h.probe),
    td('Host key', h.host_key_fingerprint || (HOST_BUSY.includes(h.status) ? 'learnt on first contact' : null), 'fingerprint'),
    td('Job', h.job_id ? el('a', { href: '#/launch/' + encodeURIComponent(h.job_id), text: h.job_id }) : null),
    hostActions(h));
}

function hostEventsRow(h) {
  const events = hostEvents.get(h.id);
  const items = events == null ? [el('li', { class: 'muted', text: 'Loading…' })]
    : events.length ? events.map(ev => el('li', { 'data-kind': ev.kind },
      el('span', { class: 'muted', text: dateTime(ev.at) + ' ' }), el('strong', { text: HOST_EVENT_KINDS[ev.kind] || ev.kind }), ' ', ev.message))
    : [el('li', { class: 'muted', text: 'No events yet.' })];
  return el('tr', { class: 'host-events', 'data-host-events': h.id, id: 'host-events-' + h.id },
    el('td', { colspan: String(HOST_COLUMNS) }, el('h3', { text: 'Events of ' + h.name + ', newest first' }), el('ol', { class: 'events' }, items)));
}

function renderHosts(hosts) {
  shownHosts = hosts;
  const body = $('#host-rows');
  for (const id of [...hostRows.keys()]) {
    if (!hosts.some(h => h.id === id)) { hostRows.delete(id); openHostEvents.delete(id); hostEvents.delete(id); }
  }
  if (!hosts.length) {
    body.replaceChildren(el('tr', {}, el('td', { colspan: String(HOST_COLUMNS), class: 'muted', text: 'No hosts yet. Add one with Add host.' })));
    return;
  }
  const rows = hosts.flatMap(h => {
    const open = openHostEvents.has(h.id);
    const data = JSON.stringify([h, open, open ? hostEvents.get(h.id) ?? null : null]);
    const old = hostRows.get(h.id);
    if (old && old.data === data) return old.rows;
    const fresh = open ? [hostRow(h), hostEventsRow(h)] : [hostRow(h)];
    hostRows.set(h.id, { data, rows: fresh });
    return fresh;
  });
  const shown = [...body.children];
  if (shown.length === rows.length && shown.every((r, i) => r === rows[i])) return;
  // Only the rows that changed are replaced, so a click or focus elsewhere is undisturbed.
  keepFocus(body, () => {
    rows.forEach((row, i) => { const at = body.children[i]; if (at !== row) body.insertBefore(row, at || null); });
    while (body.children.length > rows.length) body.lastElementChild.remove();
  });
}

async function showHosts(view) {
  show('hosts');
  refreshHostForm();
  let latest = 0;
  const load = async () => {
    const mine = ++latest;
    let hosts;
    try {
      hosts = (await api('GET', '/admin/hosts')).hosts;
      // The open events, from each host's own page (a host removed meanwhile has none).
      const details = await Promise.all(hosts.filter(h => openHostEvents.has(h.id)).map(h =>
        api('GET', '/admin/hosts/' + encodeURIComponent(h.id)).catch(e => { if (e instanceof ApiError && e.status === 404) return null; throw e; })));
      for (const d of details) if (d && openHostEvents.has(d.id)) hostEvents.set(d.id, d.events || []);
    } catch (e) { if (view.alive()) banner(e.message); return; }
    // An answer overtaken by a later request is dropped.
    if (view.alive() && mine === latest) renderHosts(hosts);
  };
  refreshHosts = load;
  hostRows.clear(); openHostEvents.clear(); hostEvents.clear(); shownHosts = [];
  $('#host-rows').replaceChildren();
  // Leaving the view wipes any credential typed into the form.
  view.signal.addEventListener('abort', clearHostSecrets);
  await load();
  // Polled every 2 s while the view is open and the tab visible; every second while a host is
  // waiting for its probe.
  let ticks = 0;
  view.every(() => {
    if (document.hidden) return;
    ticks += 1;
    if (ticks % 2 === 0 || shownHosts.some(h => HOST_BUSY.includes(h.status))) load();
  }, 1000);
}

// ---------- the add host form ----------

const hostForm = $('#host-form');
// The API's field names for the form's inputs that are named otherwise.
const HOST_FIELDS = { private_key: 'auth.private_key', password: 'auth.password', auth_kind: 'auth' };
const HOST_INPUTS = { 'auth.private_key': 'private_key', 'auth.password': 'password', auth: 'auth_kind' };

function hostAuthKind() { return hostForm.elements['auth_kind'].value; }
function refreshHostForm() {
  for (const part of $$('[data-for-auth]', hostForm)) part.hidden = part.dataset.forAuth !== hostAuthKind();
  if (catalog) $('#hf-gpu-list').replaceChildren(...catalog.gpus.map(g => el('option', { value: g.name })));
}
// The credential fields hold a secret only until it is sent.
function clearHostSecrets() {
  hostForm.elements['private_key'].value = '';
  hostForm.elements['password'].value = '';
}
function hostErrorSlot(field) {
  const f = field || '';
  const top = f.split(/[.[]/)[0];
  return (f && $('[data-error-for="' + CSS.escape(f) + '"]', hostForm))
    || (top && $('[data-error-for="' + CSS.escape(top) + '"]', hostForm))
    || $('[data-error-for="_form"]', hostForm);
}
function clearHostErrors() { for (const e of $$('[data-error-for]', hostForm)) e.replaceChildren(); }
function hostInput(field) {
  const f = field || '';
  return hostForm.elements[HOST_INPUTS[f] || f] || hostForm.elements[HOST_INPUTS[f.split(/[.[]/)[0]] || f.split(/[.[]/)[0]];
}
// An API error next to the field it names (the form's top when no field of the form is named),
// with its suggestions as buttons.
function showHostError(err) {
  clearHostErrors();
  const field = err.field || (err.code === 'host_exists' ? 'name' : '');
  const slot = hostErrorSlot(field);
  const message = field && slot.dataset.errorFor === '_form' ? field + ': ' + err.message : err.message;
  slot.replaceChildren(errorBox({ message, suggestions: err.suggestions }, s => {
    const input = hostInput(field);
    if (input && input.tagName !== 'TEXTAREA' && input.type !== 'password') input.value = s;
    slot.replaceChildren();
  }));
  const input = hostInput(field);
  if (input && input.focus) input.focus();
}
function parseLabels(text) {
  const labels = {};
  for (const part of text.split(',').map(p => p.trim()).filter(Boolean)) {
    const at = part.indexOf('=');
    if (at <= 0) return { error: 'Write labels as key=value pairs separated by commas ("' + part + '" is not one).' };
    labels[part.slice(0, at).trim()] = part.slice(at + 1).trim();
  }
  return { labels };
}
function wholeNumber(text, min, max) {
  const n = Number(text);
  return text !== '' && Number.isInteger(n) && n >= min && n <= max ? n : null;
}

hostForm.addEventListener('change', e => {
  if (e.target.name !== 'auth_kind') return;
  // The credential of the kind not chosen is not kept.
  if (hostAuthKind() === 'password') hostForm.elements['private_key'].value = ''; else hostForm.elements['password'].value = '';
  refreshHostForm();
});
// An error goes as soon as its field is edited (as in the deployment form).
hostForm.addEventListener('input', e => { if (e.target.name) hostErrorSlot(HOST_FIELDS[e.target.name] || e.target.name).replaceChildren(); });
hostForm.addEventListener('submit', async e => {
  e.preventDefault();
  clearHostErrors();
  const f = hostForm.elements;
  const body = { name: f['name'].value.trim(), address: f['address'].value.trim(), user: f['user'].value.trim() };
  const port = f['port'].value.trim();
  if (port !== '') {
    body.port = wholeNumber(port, 1, 65535);
    if (body.port == null) { showHostError({ field: 'port', message: 'The port must be a whole number from 1 to 65535.' }); return; }
  }
  if (hostAuthKind() === 'password') body.auth = { password: f['password'].value };
  else {
    const key = f['private_key'].value.replace(/\r\n/g, '\n');
    body.auth = { private_key: key && !key.endsWith('\n') ? key + '\n' : key };
  }
  const hostKey = f['host_key'].value.trim();
  if (hostKey) body.host_key = hostKey;
  const labels = parseLabels(f['labels'].value);
  if (labels.error) { showHostError({ field: 'labels', message: labels.error }); return; }
  if (Object.keys(labels.labels).length) body.labels = labels.labels;
  const gpuType = f['gpu_type'].value.trim();
  if (gpuType) body.gpu_type = gpuType;
  const gpuCount = f['gpu_count'].value.trim();
  if (gpuCount !== '') {
    body.gpu_count = wholeNumber(gpuCount, 0, 64);
    if (body.gpu_count == null) { showHostError({ field: 'gpu_count', message: 'The GPU count must be a whole number from 0 to 64.' }); return; }
  }
  const submit = $('#host-submit');
  submit.disabled = true;
  try {
    await api('POST', '/admin/hosts', body);
    // Added: the credential leaves the page with the rest of the form.
    hostForm.reset(); clearHostSecrets(); refreshHostForm();
    $('#new-host').open = false;
    banner('');
    await refreshHosts();
  } catch (err) {
    showHostError(err instanceof ApiError ? err : { message: 'cannot reach the control plane: ' + err.message });
  } finally { submit.disabled = false; }
});

// ---------- API keys ----------

const KEY_COLUMNS = 8;
// The open API keys view (a key made after it was left is not shown), its reload, and the
// list as last rendered: an unchanged list is left alone.
let keysView = null;
let refreshKeys = async () => {};
let shownKeys = '';

function countText(n) { return n.toLocaleString('en-US'); }
function keyModels(k) { return k.models ? k.models.join(', ') : 'all models'; }
function keyLimits(k) {
  const limits = [];
  if (k.requests_per_minute != null) limits.push(countText(k.requests_per_minute) + ' req/min');
  if (k.tokens_per_minute != null) limits.push(countText(k.tokens_per_minute) + ' tokens/min');
  return limits.length ? limits.join(', ') : 'no limit';
}

// A call from a key's row; the list reloads once it is answered, whatever the answer.
async function andRefreshKeys(call) {
  try { return await call; } finally { await refreshKeys(); }
}

function keyActions(k) {
  const cell = el('td', { class: 'actions-cell', 'data-label': 'Actions' });
  if (k.status !== 'active') return cell;
  cell.append(el('button', { type: 'button', class: 'small danger', text: 'Revoke', 'aria-label': 'Revoke ' + k.name,
    onclick: () => confirmThen('Revoke ' + k.name + '?', 'Clients sending this key are refused from their next request on. This cannot be undone: they will need a new key.', 'Revoke',
      () => andRefreshKeys(api('DELETE', '/admin/api-keys/' + encodeURIComponent(k.id)))) }));
  return cell;
}

function keyRow(k) {
  return el('tr', { 'data-api-key': k.id, 'data-name': k.name, 'data-status': k.status },
    td('Name', el('strong', { text: k.name })),
    td('Key', el('span', { class: 'key-prefix', text: k.prefix + '…' })),
    td('Models', keyModels(k), 'key-models' + (k.models ? '' : ' muted')),
    td('Limits', keyLimits(k), 'key-limits'),
    td('Expires', k.expires_at ? dateTime(k.expires_at) : 'never', 'key-expires'),
    td('Status', el('div', {}, badge(k.status), k.revoked_at ? el('div', { class: 'muted', text: 'since ' + dateTime(k.revoked_at) }) : null), 'key-status'),
    td('Created', dateTime(k.created_at), 'key-created'),
    keyActions(k));
}

function renderKeys(keys) {
  const data = JSON.stringify(keys);
  if (data === shownKeys) return;
  shownKeys = data;
  const body = $('#key-rows');
  keepFocus(body, () => {
    if (keys.length) body.replaceChildren(...keys.map(keyRow));
    else body.replaceChildren(el('tr', {}, el('td', { colspan: String(KEY_COLUMNS), class: 'muted',
      text: 'No API keys yet: /v1 answers anyone, unless SKYLAUNCH_API_KEYS is set. Make one with New API key.' })));
  });
}

async function showKeys(view) {
  show('keys');
  keysView = view;
  shownKeys = '';
  $('#key-rows').replaceChildren();
  // A key made here is shown only while the view stays open.
  hideNewKey();
  view.signal.addEventListener('abort', hideNewKey);
  let latest = 0;
  const load = async () => {
    const mine = ++latest;
    let keys;
    try { keys = (await api('GET', '/admin/api-keys')).api_keys; } catch (e) { if (view.alive()) banner(e.message); return; }
    // An answer overtaken by a later request is dropped.
    if (view.alive() && mine === latest) renderKeys(keys);
  };
  refreshKeys = load;
  await load();
  // Another admin's keys, and keys reaching their expiry, show up without a reload.
  view.every(() => { if (!document.hidden) load(); }, 5000);
}

// ---------- a new key, shown once ----------

function showNewKey(name, key) {
  $('#key-shown-name').textContent = name;
  $('#key-shown-value').textContent = key;
  $('#key-copied').textContent = '';
  $('#key-shown').hidden = false;
  $('#key-copy').focus();
}
// The key leaves the page: nothing keeps it once the box is gone.
function hideNewKey() {
  $('#key-shown').hidden = true;
  $('#key-shown-value').textContent = '';
  $('#key-shown-name').textContent = '';
  $('#key-copied').textContent = '';
}
$('#key-dismiss').addEventListener('click', () => { hideNewKey(); $('#new-key summary').focus(); });
$('#key-copy').addEventListener('click', async () => {
  const value = $('#key-shown-value');
  try {
    await navigator.clipboard.writeText(value.textContent);
    $('#key-copied').textContent = 'Copied.';
  } catch {
    // No clipboard for this page (served over plain http to another machine): select the key instead.
    const range = document.createRange();
    range.selectNodeContents(value);
    getSelection().removeAllRanges(); getSelection().addRange(range);
    $('#key-copied').textContent = 'Selected: press Ctrl+C to copy.';
  }
});

// ---------- the new API key form ----------

const keyForm = $('#key-form');

function keyErrorSlot(field) {
  return (field && $('[data-error-for="' + CSS.escape(field) + '"]', keyForm)) || $('[data-error-for="_form"]', keyForm);
}
function clearKeyErrors() { for (const e of $$('[data-error-for]', keyForm)) e.replaceChildren(); }
// An API error next to the field it names (the form's top when no field of the form is named).
function showKeyError(err) {
  clearKeyErrors();
  const field = err.field || '';
  const slot = keyErrorSlot(field);
  slot.replaceChildren(el('div', { text: field && slot.dataset.errorFor === '_form' ? field + ': ' + err.message : err.message }));
  const input = field && keyForm.elements[field];
  if (input && input.focus) input.focus();
}
// A limit as the API takes it: omitted when empty; null when not a whole number from 1.
function limitValue(input) {
  const text = input.value.trim();
  if (input.validity.badInput) return null;
  if (text === '') return undefined;
  return wholeNumber(text, 1, Number.MAX_SAFE_INTEGER);
}

// An error goes as soon as its field is edited (as in the other forms).
keyForm.addEventListener('input', e => { if (e.target.name) keyErrorSlot(e.target.name).replaceChildren(); });
keyForm.addEventListener('submit', async e => {
  e.preventDefault();
  clearKeyErrors();
  const f = keyForm.elements;
  const body = { name: f['name'].value.trim() };
  const models = f['models'].value.split(',').map(m => m.trim()).filter(Boolean);
  if (models.length) body.models = models;
  for (const [field, what] of [['requests_per_minute', 'Requests'], ['tokens_per_minute', 'Tokens']]) {
    const value = limitValue(f[field]);
    if (value === null) { showKeyError({ field, message: what + ' per minute must be a whole number from 1, or empty for no limit.' }); return; }
    if (value !== undefined) body[field] = value;
  }
  const expires = f['expires_at'];
  if (expires.validity.badInput) { showKeyError({ field: 'expires_at', message: 'Enter a whole date and time, or leave it empty for a key that never expires.' }); return; }
  if (expires.value) {
    // datetime-local is the browser's local time; the API takes RFC 3339, here in UTC.
    const at = new Date(expires.value);
    if (Number.isNaN(at.getTime())) { showKeyError({ field: 'expires_at', message: 'Enter a date and time, or leave it empty for a key that never expires.' }); return; }
    body.expires_at = at.toISOString().replace(/\.000Z$/, 'Z');
  }
  const submit = $('#key-submit');
  const view = keysView;
  submit.disabled = true;
  try {
    const made = await api('POST', '/admin/api-keys', body);
    keyForm.reset();
    $('#new-key').open = false;
    banner('');
    if (view && view.alive()) showNewKey(made.name, made.key);
    else banner('The key ' + made.name + ' was made after you left API keys, so it cannot be shown: revoke it and make another.');
    await refreshKeys();
  } catch (err) {
    showKeyError(err instanceof ApiError ? err : { message: 'cannot reach the control plane: ' + err.message });
  } finally { submit.disabled = false; }
});

// ---------- usage ----------

const SVG_NS = 'http://www.w3.org/2000/svg';
// The series' bucket for each period the page offers (what /admin/usage picks for it): the
// period ends at the end of the current bucket, so buckets start on whole minutes, hours or days.
const USAGE_BUCKET_S = { 3600: 60, 86400: 3600, 604800: 21600, 2592000: 86400 };
// The answer as last rendered (an unchanged answer is left alone), and the width class of the
// chart drawn for it (a phone draws a narrower chart).
let shownUsage = '';
let lastUsage = null;
let usageNarrow = null;
let refreshUsage = async () => {};

function svgEl(tag, attrs = {}, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === 'text') e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c != null) e.append(c);
  return e;
}
// Dollars: 2 decimals, 4 under a dollar.
function money(usd) {
  if (usd == null) return '—';
  if (usd === 0) return '$0.00';
  const digits = Math.abs(usd) < 1 ? 4 : 2;
  return '$' + usd.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}
function gpuHours(h) {
  if (!h) return '0';
  return h.toLocaleString('en-US', { maximumFractionDigits: h >= 100 ? 0 : h >= 1 ? 2 : 4, minimumFractionDigits: h >= 100 ? 0 : h >= 1 ? 2 : 4 });
}
function compact(n) { return n.toLocaleString('en-US', { notation: 'compact', maximumFractionDigits: 1 }); }
function bucketWord(s) {
  const units = [[86400, 'day'], [3600, 'hour'], [60, 'minute'], [1, 'second']];
  const [size, name] = units.find(([size]) => s % size === 0);
  const n = s / size;
  return n === 1 ? name : n + ' ' + name + 's';
}
// A bucket's start as an axis label: the time of day within a day, the date beyond.
function bucketLabel(iso, bucketS, spanS) {
  const d = new Date(iso);
  if (bucketS >= 86400) return d.toLocaleDateString([], { month: 'short', day: 'numeric' });
  if (spanS > 86400) return d.toLocaleString([], { weekday: 'short', hour: '2-digit', minute: '2-digit' });
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

// An axis from 0 to a round top in four equal steps (both axes share their grid lines).
function axis(max, whole) {
  if (!(max > 0)) return { top: 1, ticks: [0] };
  let step = max / 4;
  const e = 10 ** Math.floor(Math.log10(step));
  const f = step / e;
  step = [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].find(n => f <= n + 1e-9) * e;
  if (whole) step = Math.max(1, Math.ceil(step));
  return { top: step * 4, ticks: [0, 1, 2, 3, 4].map(i => i * step), step };
}
// The decimals a tick step needs (0.25: 2), so that every tick of the axis reads alike.
function decimalsOf(x) {
  let d = 0;
  while (d < 8 && Math.abs(Math.round(x * 10 ** d) - x * 10 ** d) > 1e-6) d++;
  return d;
}
function usdTick(v, step) { return v === 0 ? '$0' : '$' + v.toFixed(decimalsOf(step)); }

function usageTotals(t) {
  const part = (name, ...children) => el('span', { 'data-total': name }, ...children);
  const strong = text => el('strong', { text });
  const parts = [
    part('requests', strong(countText(t.requests)), ' requests'),
    part('tokens', strong(countText(t.prompt_tokens)), ' prompt + ', strong(countText(t.completion_tokens)), ' completion tokens'),
    part('gpu_hours', strong(gpuHours(t.gpu_hours)), ' GPU-hours'),
    part('usd', strong(money(t.usd))),
    part('usd_per_million_tokens', strong(t.usd_per_million_tokens == null ? '—' : money(t.usd_per_million_tokens)), ' per million tokens'),
  ];
  if (t.hourly_usd != null) parts.push(part('hourly_usd', 'now: ', strong(money(t.hourly_usd)), '/hour'));
  return parts;
}

// Tokens per bucket as stacked bars (prompt, completion) on the left axis; dollars per bucket
// as a line on the right axis. Drawn narrower on a phone, where the viewBox scales it down.
function usageChart(answer, narrow) {
  const series = answer.series;
  const points = series.points;
  const tokens = p => p.prompt_tokens + p.completion_tokens;
  const maxTokens = Math.max(0, ...points.map(tokens));
  const maxUsd = Math.max(0, ...points.map(p => p.usd));
  const left = axis(maxTokens, true), right = axis(maxUsd, false);
  const leftLabels = left.ticks.map(compact), rightLabels = right.ticks.map(v => usdTick(v, right.step));
  // Margins as wide as the axes' labels (12px text: about 7 units a character).
  const room = labels => Math.max(28, 10 + 7.2 * Math.max(...labels.map(l => l.length)));
  const W = narrow ? 420 : 900, H = narrow ? 260 : 280;
  const m = { top: 28, right: room(rightLabels), bottom: 30, left: room(leftLabels) };
  const pw = W - m.left - m.right, ph = H - m.top - m.bottom;
  const n = Math.max(points.length, 1);
  const band = pw / n;
  const yTokens = v => m.top + ph - v / left.top * ph;
  const yUsd = v => m.top + ph - v / right.top * ph;
  const cx = i => m.left + (i + 0.5) * band;
  const per = bucketWord(series.bucket_s);
  const spanS = (new Date(answer.to) - new Date(answer.from)) / 1000;
  const quiet = points.every(p => tokens(p) === 0 && p.requests === 0);

  const grid = svgEl('g', { class: 'chart-axis' },
    [0, 1, 2, 3, 4].map(i => {
      const y = m.top + ph - i / 4 * ph;
      return svgEl('line', { class: i ? 'chart-grid' : 'chart-base', x1: m.left, x2: W - m.right, y1: y, y2: y });
    }),
    left.ticks.map((v, i) => svgEl('text', { x: m.left - 6, y: yTokens(v) + 4, 'text-anchor': 'end', text: leftLabels[i] })),
    right.ticks.map((v, i) => svgEl('text', { x: W - m.right + 6, y: yUsd(v) + 4, 'text-anchor': 'start', text: rightLabels[i] })),
    svgEl('text', { class: 'chart-title', x: 2, y: 14, 'text-anchor': 'start', text: 'tokens' }),
    svgEl('text', { class: 'chart-title', x: W - 2, y: 14, 'text-anchor': 'end', text: '$ / ' + per }));
  const every = Math.ceil(n / (narrow ? 3 : 6));
  const labels = svgEl('g', { class: 'chart-axis chart-x' },
    points.map((p, i) => i % every ? null : svgEl('text', { x: cx(i), y: H - 10, 'text-anchor': 'middle', text: bucketLabel(p.start, series.bucket_s, spanS) })));

  const barWidth = Math.max(1, band * 0.7);
  const bars = svgEl('g', { class: 'chart-bars' }, points.map((p, i) => {
    const x = m.left + i * band + (band - barWidth) / 2;
    const base = yTokens(0), mid = yTokens(p.prompt_tokens), topY = yTokens(tokens(p));
    return svgEl('g', { class: 'bar', 'data-bucket': p.start, 'data-tokens': String(tokens(p)) },
      svgEl('title', { text: dateTime(p.start) + ' (' + per + '): ' + countText(p.prompt_tokens) + ' prompt + ' + countText(p.completion_tokens)
        + ' completion tokens, ' + countText(p.requests) + ' requests, ' + money(p.usd) }),
      svgEl('rect', { class: 'hit', x: m.left + i * band, y: m.top, width: band, height: ph }),
      svgEl('rect', { class: 'bar-prompt', x, y: mid, width: barWidth, height: base - mid }),
      svgEl('rect', { class: 'bar-completion', x, y: topY, width: barWidth, height: mid - topY }));
  }));
  const cost = svgEl('g', { class: 'chart-cost' },
    svgEl('polyline', { class: 'cost-line', points: points.map((p, i) => cx(i).toFixed(1) + ',' + yUsd(p.usd).toFixed(1)).join(' ') }),
    points.map((p, i) => svgEl('circle', { class: 'cost-point', cx: cx(i).toFixed(1), cy: yUsd(p.usd).toFixed(1), r: narrow || n > 30 ? 2.5 : 3.5, 'data-usd': String(p.usd) },
      svgEl('title', { text: dateTime(p.start) + ' (' + per + '): ' + money(p.usd) }))));

  const period = $('#usage-period').selectedOptions[0].textContent;
  const totalTokens = points.reduce((s, p) => s + tokens(p), 0);
  const totalUsd = points.reduce((s, p) => s + p.usd, 0);
  let summary = 'Tokens and cost per ' + per + ' over the ' + period + ': ';
  if (quiet) summary += 'no traffic in this period; ' + money(totalUsd) + ' in all.';
  else {
    const busiest = points.reduce((a, p) => tokens(p) > tokens(a) ? p : a);
    summary += countText(totalTokens) + ' tokens and ' + money(totalUsd) + ' in all; the busiest ' + per + ', from '
      + dateTime(busiest.start) + ', had ' + countText(tokens(busiest)) + ' tokens; the costliest ' + money(maxUsd) + '.';
  }
  return svgEl('svg', { xmlns: SVG_NS, viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': summary, 'data-chart': 'usage',
    'data-from': answer.from, 'data-to': answer.to, 'data-group-by': answer.group_by, preserveAspectRatio: 'xMidYMid meet' },
  grid, bars, cost, labels,
  quiet ? svgEl('text', { class: 'chart-note', x: m.left + pw / 2, y: m.top + ph / 2, 'text-anchor': 'middle', text: 'No traffic in this period' }) : null);
}
function usageLegend(bucketS) {
  const item = (cls, text) => el('li', {}, el('span', { class: 'swatch ' + cls, 'aria-hidden': 'true' }), text);
  return el('ul', { class: 'chart-legend' }, item('prompt', 'Prompt tokens'), item('completion', 'Completion tokens'),
    item('cost', 'Cost, $ per ' + bucketWord(bucketS)));
}
function chartIsNarrow() { return $('#usage-chart').clientWidth < 600; }
function drawUsageChart(answer) {
  usageNarrow = chartIsNarrow();
  $('#usage-chart').replaceChildren(usageChart(answer, usageNarrow), usageLegend(answer.series.bucket_s));
}

function usageRow(g, hourly) {
  return el('tr', { 'data-group': g.group, 'data-key-id': g.key_id },
    td('Group', el('strong', { text: g.group, title: g.key_id ? 'key ' + g.key_id : null })),
    td('Requests', countText(g.requests), 'num'),
    td('Prompt tokens', countText(g.prompt_tokens), 'num'),
    td('Completion tokens', countText(g.completion_tokens), 'num'),
    td('GPU-hours', gpuHours(g.gpu_hours), 'num'),
    td('$', money(g.usd), 'num usd'),
    td('$/M tokens', g.usd_per_million_tokens == null ? '—' : money(g.usd_per_million_tokens), 'num'),
    hourly ? td('$/hour now', g.hourly_usd == null ? '—' : money(g.hourly_usd), 'num') : null);
}

function renderUsage(answer) {
  const data = JSON.stringify(answer);
  if (data === shownUsage) return;
  shownUsage = data; lastUsage = answer;
  $('#usage-totals').replaceChildren(...usageTotals(answer.total));
  drawUsageChart(answer);
  const groups = answer.usage;
  // $/hour now is in the answer for model and deployment groups, not for keys.
  const hourly = groups.length ? groups.some(g => g.hourly_usd !== undefined) : answer.group_by !== 'key';
  const heads = ['Group', 'Requests', 'Prompt tokens', 'Completion tokens', 'GPU-hours', '$', '$/M tokens', ...(hourly ? ['$/hour now'] : [])];
  $('#usage-head').replaceChildren(...heads.map((h, i) => el('th', { class: i ? 'num' : null, scope: 'col', text: h })));
  $('#usage-rows').replaceChildren(...(groups.length ? groups.map(g => usageRow(g, hourly))
    : [el('tr', {}, el('td', { colspan: String(heads.length), class: 'muted', text: 'No usage in this period.' }))]));
}

// The period the form asks for: from one period before the end of the current bucket.
function usageQuery() {
  const f = $('#usage-filters').elements;
  const period = Number(f['period'].value) * 1000;
  const bucket = (USAGE_BUCKET_S[f['period'].value] || 60) * 1000;
  const to = (Math.floor(Date.now() / bucket) + 1) * bucket;
  const iso = ms => new Date(ms).toISOString().replace(/\.000Z$/, 'Z');
  return '/admin/usage?' + new URLSearchParams({ from: iso(to - period), to: iso(to), group_by: f['group_by'].value });
}

async function showUsage(view) {
  show('usage');
  shownUsage = ''; lastUsage = null;
  let latest = 0;
  const load = async () => {
    const mine = ++latest;
    let answer;
    try { answer = await api('GET', usageQuery()); } catch (e) { if (view.alive()) banner(e.message); return; }
    // An answer overtaken by a later request (the form changed meanwhile) is dropped.
    if (view.alive() && mine === latest) renderUsage(answer);
  };
  refreshUsage = load;
  await load();
  view.every(() => { if (!document.hidden) load(); }, 10000);
}
$('#usage-filters').addEventListener('change', () => { if (!$('#view-usage').hidden) refreshUsage(); });
$('#usage-filters').addEventListener('submit', e => e.preventDefault());
// A phone turned, or a window resized past the chart's breakpoint: the chart is drawn anew.
window.addEventListener('resize', () => {
  if (!$('#view-usage').hidden && lastUsage && chartIsNarrow() !== usageNarrow) drawUsageChart(lastUsage);
});

// ---------- launches ----------

let jobs = [];
function jobFilters() {
  const f = new FormData($('#launch-filters'));
  return { status: f.get('status'), provider: f.get('provider'), model: (f.get('model') || '').toLowerCase() };
}
function renderLaunches() {
  const f = jobFilters();
  const shown = jobs.filter(j => (!f.status || j.status === f.status) && (!f.provider || j.provider === f.provider)
    && (!f.model || j.spec.model.toLowerCase().includes(f.model)));
  const rows = shown.map(j => el('tr', { 'data-job': j.id },
    td('Started', el('a', { href: '#/launch/' + j.id, text: dateTime(j.created_at) })),
    td('Model', j.spec.model), td('Provider', j.provider),
    td('GPU', j.provider === 'local' ? '—' : gpuText(j.spec.gpu, j.spec.gpu_count) + (j.spec.use_spot ? ' spot' : '')),
    td('Status', badge(j.status)),
    td('Stage or error', j.error ? j.error.title : (j.stage ? STAGE_LABELS[j.stage] || j.stage : '')),
    td('Took', duration((j.finished_at ? new Date(j.finished_at) : new Date()) - new Date(j.created_at)))));
  const body = $('#launch-rows');
  keepFocus(body, () => rows.length ? body.replaceChildren(...rows) : body.replaceChildren(el('tr', {}, el('td', { colspan: '7', class: 'muted', text: jobs.length ? 'No launch matches the filters.' : 'No launches yet.' }))));
}
$('#launch-filters').addEventListener('input', renderLaunches);
$('#launch-filters').addEventListener('submit', e => e.preventDefault());

async function showLaunches(view) {
  show('launches');
  const load = async () => {
    try {
      const body = await api('GET', '/admin/launch-jobs');
      if (view.alive()) { jobs = body.jobs; renderLaunches(); }
    } catch (e) { if (view.alive()) banner(e.message); }
  };
  await load();
  view.every(load, 3000);
}

// ---------- one launch, live ----------

// "us-east-1b" when the zone names its region, else "us-east-1 (use1-az1)" (a zone id).
function placeText(region, zone) {
  if (!zone) return region || '';
  if (!region || zone.startsWith(region)) return zone;
  return region + ' (' + zone + ')';
}
function attemptText(a) {
  const where = [CLOUD_NAMES[a.cloud] || a.cloud, placeText(a.region, a.zone)].filter(Boolean).join(' ');
  const parts = [where, a.market === 'spot' ? 'spot' : 'on-demand', a.instance_type, a.price_per_hour != null ? '$' + a.price_per_hour.toFixed(2) + '/h' : null];
  return parts.filter(Boolean).join(', ');
}

function renderStages(job) {
  $('#launch-stages').replaceChildren(...job.stages.map(s => {
    const took = s.started_at ? duration((s.finished_at ? new Date(s.finished_at) : new Date()) - new Date(s.started_at)) : '';
    return el('li', { class: s.state, 'data-stage': s.name, 'data-state': s.state },
      el('span', { class: 'stage-name', text: STAGE_LABELS[s.name] || s.name }),
      el('span', { class: 'stage-time', text: [s.state !== 'done' && s.state !== 'pending' ? s.state : null, s.started_at ? time(s.started_at) : null, took && (s.state === 'active' ? took + ' so far' : took)].filter(Boolean).join(' · ') }),
      s.detail ? el('div', { class: 'stage-detail', text: s.detail }) : null);
  }));
}

function renderAttempts(job) {
  const attempts = job.attempts || [];
  $('#launch-attempts').replaceChildren(...(attempts.length ? attempts.map(a => el('tr', {},
    td('Cloud', CLOUD_NAMES[a.cloud] || a.cloud), td('Region / zone', [a.region, a.zone].filter(Boolean).join(' / ')),
    td('Instance', a.instance_type), td('Market', a.market === 'spot' ? 'spot' : 'on-demand'),
    td('Price', a.price_per_hour != null ? '$' + a.price_per_hour.toFixed(2) + '/h' : null),
    td('Outcome', a.outcome), td('Reason', a.reason))) : [el('tr', {}, el('td', { colspan: '7', class: 'muted', text: 'None yet.' }))]));
  const last = attempts[attempts.length - 1];
  const running = job.status === 'running' || job.status === 'queued';
  // The placement in hand: being tried, or just refused while the provider moves on.
  let now = '';
  if (running && last && last.outcome === 'trying') now = 'Trying ' + attemptText(last);
  else if (running && last && last.outcome === 'failed') now = 'Tried ' + attemptText(last) + (last.reason ? ': ' + last.reason : '') + '. Looking for the next placement…';
  $('#launch-attempt').textContent = now;
}

// What a failed launch's error offers as one-click actions.
function retryBody(job, change) {
  const s = job.spec;
  const body = { model: s.model, provider: s.provider, gpu_count: s.gpu_count, use_spot: s.use_spot,
    spot_fallback: s.fallback_to_on_demand ? 'on_demand' : 'none', regions: s.regions, template: s.template, disk_gb: s.disk_gb };
  if (s.gpu) body.gpu = s.gpu;
  if (s.cloud) body.cloud = s.cloud;
  if (s.envs && Object.keys(s.envs).length) body.envs = s.envs;
  return Object.assign(body, change);
}
async function relaunch(body) {
  try {
    const job = await api('POST', '/admin/launch-jobs', body, { 'Idempotency-Key': newKey() });
    location.hash = '#/launch/' + job.id;
  } catch (e) {
    await openLaunchForm(body);
    showFormError(e);
  }
}
function errorActions(job) {
  const e = job.error; const s = job.spec; const actions = [];
  if (e.code === 'cancelled') return actions;
  if (s.use_spot && ['spot_capacity_unavailable', 'capacity_unavailable', 'quota_exceeded'].includes(e.code)) {
    actions.push(['Retry on on-demand', () => relaunch(retryBody(job, { use_spot: false, spot_fallback: 'none' }))]);
  }
  if (!['invalid_accelerator', 'invalid_region', 'invalid_request', 'credentials_invalid', 'no_cloud_access'].includes(e.code)) {
    actions.push(['Retry', () => relaunch(retryBody(job, {}))]);
  }
  actions.push(['Edit and retry', () => openLaunchForm(retryBody(job, {}))]);
  return actions;
}
// A suggestion naming a concrete value ("Use region us-east-1") becomes a button that relaunches with it.
function suggestionAction(job, text) {
  const m = text.match(/^Use region ([\w-]+)$/);
  if (m) return () => openLaunchForm(retryBody(job, { regions: [m[1]] }));
  return null;
}

function renderJob(job) {
  $('#launch-title').textContent = job.spec.model + ' on ' + (job.provider === 'local' ? 'this machine' : gpuText(job.spec.gpu, job.spec.gpu_count) + (job.spec.cloud ? ' · ' + (CLOUD_NAMES[job.spec.cloud] || job.spec.cloud) : ''));
  const status = $('#launch-status');
  status.className = 'badge s-' + job.status; status.textContent = job.status;
  $('#launch-elapsed').textContent = 'started ' + dateTime(job.created_at) + ' · ' +
    duration((job.finished_at ? new Date(job.finished_at) : new Date()) - new Date(job.created_at)) + (job.finished_at ? '' : ' so far');
  renderStages(job); renderAttempts(job);
  $('#launch-cancel').hidden = !(job.status === 'queued' || job.status === 'running');
  const nodeLink = $('#launch-node');
  nodeLink.hidden = !job.node_id; if (job.node_id) nodeLink.href = '#/node/' + job.node_id;
  const panel = $('#launch-error');
  panel.hidden = !job.error;
  if (job.error) {
    const e = job.error;
    $('#launch-error-title').textContent = e.title;
    $('#launch-error-message').textContent = e.message;
    $('#launch-error-actions').replaceChildren(...errorActions(job).map(([label, fn]) => el('button', { type: 'button', text: label, onclick: fn })));
    $('#launch-error-suggestions').replaceChildren(...(e.suggestions || []).map(text => {
      const act = suggestionAction(job, text);
      return el('li', {}, act ? el('button', { type: 'button', class: 'small', text, onclick: act }) : text);
    }));
    $('#launch-error-raw').hidden = !e.raw;
    $('#launch-error-raw pre').textContent = e.raw || '';
  }
}

async function showLaunch(view, id) {
  show('launch');
  let job;
  try { job = await api('GET', '/admin/launch-jobs/' + encodeURIComponent(id)); } catch (e) { if (view.alive()) banner(e.message); return; }
  if (!view.alive()) return;
  renderJob(job);
  const log = $('#launch-log pre');
  log.textContent = '';
  let logLoaded = false;
  const loadLog = async () => {
    try {
      const res = await fetch('/admin/launch-jobs/' + encodeURIComponent(id) + '/logs', { headers: { Authorization: 'Bearer ' + token() }, signal: view.signal });
      const text = res.ok ? await res.text() : 'could not load the log (' + res.status + ')';
      // Lines streamed in while the log loaded are in it already.
      log.textContent = text;
    } catch (e) {
      if (view.alive()) log.textContent = 'could not load the log: ' + e.message;
    }
    logLoaded = true;
  };
  $('#launch-log').open = false;
  $('#launch-log').ontoggle = () => { if ($('#launch-log').open && !logLoaded) loadLog(); };
  $('#launch-cancel').onclick = () => confirmThen('Cancel this launch?', 'skylaunch stops the launch and tears down whatever it created.', 'Cancel launch',
    () => api('POST', '/admin/launch-jobs/' + encodeURIComponent(id) + '/cancel'));
  if (!['succeeded', 'failed', 'cancelled'].includes(job.status)) {
    keepSubscribed('/admin/launch-jobs/' + encodeURIComponent(id) + '/events', (kind, data) => {
      if (kind === 'job') job = data;
      else if (kind === 'stage') { job.stages = data.stages; job.stage = data.stage; if (job.status === 'queued') job.status = 'running'; }
      else if (kind === 'attempt') job.attempts = data.attempts;
      else if (kind === 'log') {
        if (logLoaded) { log.textContent += '[' + data.stream + '] ' + data.line + '\n'; log.scrollTop = log.scrollHeight; }
        return;
      }
      renderJob(job);
    }, view.signal, () => {}, () => Boolean(job.finished_at) || ['succeeded', 'failed', 'cancelled'].includes(job.status));
  }
  view.every(() => { if (!job.finished_at) renderJob(job); }, 1000);
}

// ---------- the launch form ----------

let catalog = null;
const dialog = $('#launch-dialog');
const form = $('#launch-form');
let formKey = newKey();
// What a prefilled form carries that it has no field for (template, disk, envs): kept as is.
let formExtras = {};

async function loadCatalog() {
  if (!catalog) catalog = await api('GET', '/admin/catalog');
  return catalog;
}
function providerOf() { return form.provider.value; }
function cloudsFor(provider) {
  if (provider === 'aws' || provider === 'azure') return [provider];
  return catalog.clouds.map(c => c.name);
}
function fillSelect(select, options, keep) {
  const previous = keep ?? select.value;
  select.replaceChildren(...options.map(([value, label]) => el('option', { value, text: label })));
  if (options.some(([v]) => v === previous)) select.value = previous;
}
function refreshForm() {
  const provider = providerOf();
  for (const part of $$('[data-for-providers]', form)) part.hidden = !part.dataset.forProviders.split(' ').includes(provider);
  const clouds = cloudsFor(provider);
  fillSelect(form.cloud, [['', 'any enabled cloud'], ...clouds.map(c => [c, CLOUD_NAMES[c] || c])]);
  const cloud = provider === 'skypilot' ? form.cloud.value : provider;
  const gpus = catalog.gpus.filter(g => !cloud || g.clouds.includes(cloud));
  fillSelect(form.gpu, gpus.map(g => [g.name, g.name + ' (' + g.memory_gb + ' GB)']));
  const gpu = catalog.gpus.find(g => g.name === form.gpu.value);
  fillSelect(form.gpu_count, (gpu ? gpu.counts : [1]).map(c => [String(c), String(c)]));
  const regions = cloud ? (catalog.clouds.find(c => c.name === cloud) || { regions: [] }).regions : catalog.clouds.flatMap(c => c.regions);
  $('#lf-region-list').replaceChildren(...regions.map(r => el('option', { value: r })));
  $('#lf-fallback-label').hidden = form.market.value !== 'spot';
}
form.addEventListener('change', e => { if (e.target.name !== 'regions') refreshForm(); clearError(e.target.name); });

function clearErrors() { for (const e of $$('[data-error-for]', form)) e.replaceChildren(); }
function clearError(field) { const e = field && $('[data-error-for="' + CSS.escape(field) + '"]', form); if (e) e.replaceChildren(); }

// An API error's message (as text: it may echo what was typed) with its suggestions as buttons;
// `pick` applies one.
function errorBox(err, pick) {
  const box = el('div', {}, el('div', { text: err.message }));
  const suggestions = err.suggestions || [];
  if (suggestions.length) {
    box.append(el('div', { class: 'suggestions' }, el('span', { text: 'Did you mean:' }),
      suggestions.slice(0, 6).map(s => el('button', { type: 'button', class: 'small suggestion', text: s, onclick: () => pick(s) }))));
  }
  return box;
}

// Puts an API validation error next to the field it concerns, with its suggestions as buttons.
function showFormError(err) {
  clearErrors();
  const field = (err.field || '').replace(/\[\d+\]$/, '').replace(/^spec\./, '');
  const target = (field && $('[data-error-for="' + CSS.escape(field) + '"]', form)) || $('[data-error-for="_form"]', form);
  target.replaceChildren(errorBox(err, s => applySuggestion(field, s, err)));
  const input = form.elements[field];
  if (input && input.focus) input.focus();
}
function applySuggestion(field, suggestion, err) {
  const pair = suggestion.match(/^(\w+): (.+)$/);
  if (pair && form.elements[pair[1]]) { field = pair[1]; suggestion = pair[2]; }
  if (field === 'regions') {
    // Replace the region the API named, or every region if it did not say which.
    const bad = (err.message.match(/'([^']+)'|"([^"]+)"/) || []).slice(1).find(Boolean);
    const list = form.regions.value.split(',').map(r => r.trim()).filter(Boolean);
    const i = bad ? list.indexOf(bad) : -1;
    if (i >= 0) list[i] = suggestion; else list.splice(0, list.length, suggestion);
    form.regions.value = list.join(', ');
  } else if (form.elements[field]) {
    const input = form.elements[field];
    if (input.tagName === 'SELECT' && ![...input.options].some(o => o.value === suggestion)) input.append(el('option', { value: suggestion, text: suggestion }));
    input.value = suggestion;
    if (field === 'provider' || field === 'cloud' || field === 'gpu') refreshForm();
    if (input.tagName === 'SELECT') input.value = suggestion;
  }
  clearError(field);
}

// Which providers can launch (GET /admin/providers): each listed with its verdict, a provider
// that cannot is disabled in the select with its reason and fix shown; polled while a cloud's
// check runs.
const PROVIDER_NAMES = { skypilot: 'SkyPilot', aws: 'AWS (native)', azure: 'Azure (native)', local: 'Local (this machine)', ssh: 'SSH hosts' };
let readiness = null;
let readinessTimer = null;
function readinessState(p) { return p.checking && !p.checked_at ? 'checking' : p.ready ? 'ready' : 'not-ready'; }
async function loadReadiness(refresh) {
  clearTimeout(readinessTimer);
  try {
    readiness = await api('GET', '/admin/providers' + (refresh ? '?refresh=true' : ''));
  } catch (e) {
    $('#lf-providers').replaceChildren(el('li', { class: 'muted', text: 'cannot check the providers: ' + e.message }));
    return;
  }
  showReadiness();
  if (dialog.open && readiness.providers.some(p => p.checking)) readinessTimer = setTimeout(() => loadReadiness(false), 1000);
}
function showReadiness() {
  if (!readiness || !catalog) return;
  $('#lf-providers').replaceChildren(...readiness.providers.map(p => {
    const state = readinessState(p);
    const li = el('li', { 'data-provider': p.provider, 'data-state': state },
      el('span', { class: 'badge s-' + state, text: state === 'checking' ? 'checking…' : state === 'ready' ? 'ready' : 'not ready' }), ' ',
      el('strong', { text: PROVIDER_NAMES[p.provider] || p.provider }), ' ',
      el('span', { class: 'summary muted', text: state === 'checking' ? '' : p.summary }));
    if (state === 'not-ready' && p.error) {
      li.append(el('details', { class: 'fix' }, el('summary', { text: 'Why, and what to do' }),
        el('p', {}, el('span', { text: p.error.message + ' ' }), el('span', { class: 'code', text: p.error.code })),
        el('ul', {}, (p.error.suggestions || []).map(s => el('li', { text: s })))));
    }
    return li;
  }));
  for (const option of form.provider.options) {
    option.dataset.label ??= option.textContent;
    const p = readiness.providers.find(x => x.provider === option.value);
    const notReady = p && readinessState(p) === 'not-ready';
    const absent = !catalog.providers.includes(option.value);
    option.hidden = absent;
    option.disabled = absent || notReady;
    option.textContent = option.dataset.label + (notReady ? ' (not ready: ' + p.summary + ')' : '');
  }
  if (form.provider.selectedOptions[0] && form.provider.selectedOptions[0].disabled) {
    const first = [...form.provider.options].find(o => !o.disabled);
    if (first) { form.provider.value = first.value; refreshForm(); }
  }
}
$('#lf-readiness-refresh').addEventListener('click', () => loadReadiness(true));

async function openLaunchForm(prefill) {
  try { await loadCatalog(); } catch (e) { banner('cannot load the GPU catalogue: ' + e.message); return; }
  form.reset(); clearErrors(); formKey = newKey();
  formExtras = {};
  if (prefill) for (const k of ['template', 'disk_gb', 'envs']) if (prefill[k] !== undefined) formExtras[k] = prefill[k];
  // The API shows env values as <secret>: those cannot be launched again from here.
  const hidden = Object.keys(formExtras.envs || {}).filter(k => formExtras.envs[k] === '<secret>');
  if (hidden.length) {
    formExtras.envs = Object.fromEntries(Object.entries(formExtras.envs).filter(([k]) => !hidden.includes(k)));
    banner(`The earlier launch's values of ${hidden.join(', ')} are secret and not carried over: launch through the API with them if this model needs them.`);
  }
  for (const option of form.provider.options) option.hidden = option.disabled = !catalog.providers.includes(option.value);
  if (prefill) {
    form.model.value = prefill.model || '';
    form.provider.value = prefill.provider || 'skypilot';
    refreshForm();
    if (prefill.cloud) form.cloud.value = prefill.cloud;
    refreshForm();
    if (prefill.gpu) form.gpu.value = prefill.gpu;
    refreshForm();
    if (prefill.gpu_count) form.gpu_count.value = String(prefill.gpu_count);
    form.market.value = prefill.use_spot === false ? 'on_demand' : 'spot';
    form.spot_fallback.value = prefill.spot_fallback || 'on_demand';
    form.regions.value = (prefill.regions || []).join(', ');
  }
  refreshForm();
  if (!dialog.open) dialog.showModal();
  form.model.focus();
  showReadiness();
  loadReadiness(false);
}
$('#open-launch').addEventListener('click', () => openLaunchForm(null));
$('#launch-dialog-close').addEventListener('click', () => dialog.close());

form.addEventListener('submit', async e => {
  e.preventDefault();
  clearErrors();
  const provider = providerOf();
  const body = { ...formExtras, model: form.model.value.trim(), provider };
  if (!body.model) { showFormError({ field: 'model', message: 'Enter the Hugging Face id of the model to serve, e.g. Qwen/Qwen2.5-7B-Instruct.' }); return; }
  if (form.elements['name'].value.trim()) body.name = form.elements['name'].value.trim();
  if (provider !== 'local') {
    body.gpu = form.gpu.value;
    body.gpu_count = Number(form.gpu_count.value);
    body.use_spot = form.market.value === 'spot';
    body.spot_fallback = body.use_spot ? form.spot_fallback.value : 'none';
    body.regions = form.regions.value.split(',').map(r => r.trim()).filter(Boolean);
    if (provider === 'skypilot' && form.cloud.value) body.cloud = form.cloud.value;
  }
  const submit = $('#launch-submit');
  submit.disabled = true;
  try {
    const job = await api('POST', '/admin/launch-jobs', body, { 'Idempotency-Key': formKey });
    dialog.close();
    location.hash = '#/launch/' + job.id;
  } catch (err) {
    if (err instanceof ApiError) { formKey = newKey(); showFormError(err); } else showFormError({ message: 'cannot reach the control plane: ' + err.message });
  } finally { submit.disabled = false; }
});

// ---------- try a model ----------

async function loadModels() {
  const key = sessionStorage.getItem(API_KEY);
  const res = await fetch('/v1/models', { headers: key ? { Authorization: 'Bearer ' + key } : {} });
  if (res.status === 401) { $('#chat-key-label').hidden = false; return null; }
  if (!res.ok) throw new Error('cannot list models (' + res.status + ')');
  return (await res.json()).data;
}
let chatBusy = false;
async function showChat(view) {
  show('chat');
  $('#chat-key').value = sessionStorage.getItem(API_KEY) || '';
  const select = $('#chat-model');
  let refused = false;
  const refresh = async () => {
    if (refused) return; // no point asking again without a key: wait for one to be entered
    try {
      const models = await loadModels();
      if (!view.alive()) return;
      if (!models) { refused = true; $('#chat-error').textContent = 'This control plane requires an API key for /v1 (from SKYLAUNCH_API_KEYS, or one made in API keys): enter one.'; return; }
      fillSelect(select, models.map(m => [m.id, m.id + ' (' + m.ready_nodes + ' ready)']));
      $('#chat-send').disabled = chatBusy || !models.length;
      if (!models.length) $('#chat-error').textContent = 'No model has a ready node yet. Launch one first.';
      else if ($('#chat-error').textContent.startsWith('No model')) $('#chat-error').textContent = '';
    } catch (e) { $('#chat-error').textContent = e.message; }
  };
  await refresh();
  view.every(refresh, 5000);
}
$('#chat-key').addEventListener('change', () => { sessionStorage.setItem(API_KEY, $('#chat-key').value.trim()); route(); });
$('#chat').addEventListener('submit', async e => {
  e.preventDefault();
  const answer = $('#chat-answer');
  const error = $('#chat-error');
  answer.textContent = ''; error.textContent = ''; delete answer.dataset.done;
  const key = sessionStorage.getItem(API_KEY);
  const send = $('#chat-send');
  send.disabled = true; chatBusy = true;
  try {
    const res = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...(key ? { Authorization: 'Bearer ' + key } : {}) },
      body: JSON.stringify({ model: $('#chat-model').value, stream: true, max_tokens: 256,
        messages: [{ role: 'user', content: $('#chat-prompt').value }] }),
    });
    if (!res.ok) { const body = await res.json().catch(() => null); throw new ApiError(res.status, body); }
    await readEvents(res, (_, data) => {
      if (data === '[DONE]') return;
      const chunk = JSON.parse(data);
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) answer.textContent += delta.content;
    });
    answer.dataset.done = 'true';
  } catch (err) { error.textContent = err.message; } finally { chatBusy = false; send.disabled = false; }
});

// ---------- housekeeping ----------

async function showHousekeeping(view) {
  show('housekeeping');
  const load = async () => {
    let body;
    try { body = await api('GET', '/admin/cloud-events?limit=100'); } catch (e) { if (view.alive()) banner(e.message); return; }
    if (!view.alive()) return;
    const rows = body.events.map(ev => el('tr', {},
      td('When', dateTime(ev.at)), td('What', EVENT_KINDS[ev.kind] || ev.kind),
      td('Cloud / region', [ev.cloud, ev.region].filter(Boolean).join(' / ')),
      td('Instance', ev.instance_id), td('Job', ev.job_id ? el('a', { href: '#/launch/' + ev.job_id, text: ev.job_id }) : null),
      td('Details', ev.message, 'muted')));
    $('#cloud-events').replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: '6', class: 'muted', text: 'Nothing to report: every tagged instance belongs to a launch or a live node.' }))]));
  };
  await load();
  view.every(load, 10000);
}

// ---------- start ----------

async function start() {
  if (!token()) { show('signin'); return; }
  try {
    await loadCatalog();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) { show('signin'); $('#signin-error').textContent = 'cannot reach the control plane: ' + e.message; }
    return;
  }
  route();
}

// The address printed at start-up carries the token once, in the fragment; keep it in session
// storage and take it out of the address bar at once.
(() => {
  const m = location.hash.match(/^#token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search + '#/fleet');
  }
})();
start();
