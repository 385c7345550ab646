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
  const row = e.closest('[data-node],[data-job],[data-action],[data-deployment]');
  return { row: row ? row.dataset.node || row.dataset.job || row.dataset.action || row.dataset.deployment : null, label: e.getAttribute('aria-label') || e.textContent };
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

const views = ['signin', 'fleet', 'node', 'deployments', 'launches', 'launch', 'chat', 'housekeeping'];
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
    fleet: v => showFleet(v), node: v => showNode(v, id), deployments: v => showDeployments(v), launches: v => showLaunches(v),
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
const DRIFTS = { missing_replica: 'missing replica', unhealthy_replica: 'unhealthy replica', spot_interruption: 'spot interruption', outdated_revision: 'outdated revision', excess_replica: 'excess replica' };
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

function deploymentStatus(d) {
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
  if (!revisions.length) return el('p', { class: 'muted', text: 'No replicas.' });
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

function actionTable(actions) {
  if (!actions.length) return el('p', { class: 'muted', text: 'No actions in progress.' });
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
    return el('tr', { 'data-action': a.id, 'data-state': a.state, 'data-kind': a.kind },
      td('When', time(a.created_at)), td('Action', label), td('Why', DRIFTS[a.drift] || a.drift),
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

function deploymentCard(d, actions) {
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
  if (d.replicas.launching) facts.push(['Launching', String(d.replicas.launching), null]);
  if (d.replicas.draining) facts.push(['Draining', String(d.replicas.draining), null]);
  return el('article', { class: 'deployment card', 'data-deployment': d.name, 'data-status': d.status, 'data-revision': String(d.revision),
    'data-ready': String(d.replicas.ready), 'data-desired': String(d.replicas.desired), 'aria-labelledby': 'deployment-' + d.name },
    el('div', { class: 'deployment-head' }, el('h2', { id: 'deployment-' + d.name, text: d.name }), deploymentStatus(d)),
    el('dl', { class: 'deployment-facts' }, facts.map(([k, v, cls]) => el('div', { class: cls }, el('dt', { text: k }), el('dd', { text: v })))),
    deploymentControls(d),
    rolloutProgress(d),
    replicaGroups(d),
    el('h3', { text: 'Actions in progress' + (d.pending_actions ? ' · ' + d.pending_actions + ' waiting for approval' : '') }),
    actionTable(actions));
}

function renderDeployments(deployments, actions) {
  const list = $('#deployment-list');
  if (!deployments.length) {
    deploymentCards.clear();
    list.replaceChildren(el('p', { class: 'muted', text: 'No deployments yet. Create one with New deployment.' }));
    return;
  }
  const cards = deployments.map(d => {
    // By name alone: a deleted deployment's actions go with it. (Not by time either: an action
    // can carry the time of the reconciler pass that began just before its deployment existed.)
    const mine = actions.filter(a => a.deployment === d.name)
      .sort((a, b) => new Date(b.created_at) - new Date(a.created_at) || b.id.localeCompare(a.id));
    // Heartbeat times are not shown: they alone do not re-render a card.
    const data = JSON.stringify([d, mine], (k, v) => k === 'last_heartbeat_at' ? undefined : v);
    const old = deploymentCards.get(d.name);
    if (old && old.data === data) return old.card;
    const card = deploymentCard(d, mine);
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
  refreshDeploymentForm();
  const load = async () => {
    let deployments, actions;
    try {
      const [list, ...open] = await Promise.all([api('GET', '/admin/deployments'),
        ...OPEN_ACTION_STATES.map(s => api('GET', '/admin/actions?state=' + s))]);
      deployments = list.deployments; actions = open.flatMap(o => o.actions);
    } catch (e) { if (view.alive()) banner(e.message); return; }
    if (view.alive()) renderDeployments(deployments, actions);
  };
  refreshDeployments = load;
  deploymentCards.clear(); scaleDrafts.clear();
  $('#deployment-list').replaceChildren();
  await load();
  // Polled while the view is open and the tab is visible.
  view.every(() => { if (!document.hidden) load(); }, 2000);
}
document.addEventListener('visibilitychange', () => { if (!document.hidden && current && !$('#view-deployments').hidden) refreshDeployments(); });

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
function deploymentErrorSlot(field) {
  const top = (field || '').split(/[.[]/)[0];
  return (top && $('[data-error-for="' + CSS.escape(top) + '"]', deploymentForm)) || $('[data-error-for="_form"]', deploymentForm);
}
function clearDeploymentErrors() { for (const e of $$('[data-error-for]', deploymentForm)) e.replaceChildren(); }
function showDeploymentError(err) {
  clearDeploymentErrors();
  deploymentErrorSlot(err.field).replaceChildren(errorBox(err, s => applyDeploymentSuggestion(err.field, s)));
  const input = deploymentForm.elements[(err.field || '').split(/[.[]/)[0]];
  if (input && input.focus) input.focus();
}
function applyDeploymentSuggestion(field, suggestion) {
  const f = deploymentForm;
  const pair = suggestion.match(/^(\w+): (.+)$/);
  if (pair && f.elements[pair[1]]) { field = pair[1]; suggestion = pair[2]; }
  const input = f.elements[field];
  if (!input) return;
  if (input.tagName === 'SELECT' && ![...input.options].some(o => o.value === suggestion)) input.append(el('option', { value: suggestion, text: suggestion }));
  input.value = suggestion;
  if (field === 'provider') { refreshDeploymentForm(); f.provider.value = suggestion; }
  deploymentErrorSlot(field).replaceChildren();
}
deploymentForm.addEventListener('change', e => { if (e.target.name === 'provider') refreshDeploymentForm(); });
// An error goes as soon as its field is edited, not when it loses focus: a form that shrinks
// under the pointer would swallow the click on Create.
deploymentForm.addEventListener('input', e => { if (e.target.name) deploymentErrorSlot(e.target.name).replaceChildren(); });
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
  const submit = $('#deployment-submit');
  submit.disabled = true;
  try {
    await api('POST', '/admin/deployments', body);
    f.reset(); refreshDeploymentForm();
    $('#new-deployment').open = false;
    banner('');
    await refreshDeployments();
  } catch (err) {
    showDeploymentError(err instanceof ApiError ? err : { message: 'cannot reach the control plane: ' + err.message });
  } finally { submit.disabled = false; }
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
      if (!models) { refused = true; $('#chat-error').textContent = 'This control plane requires an API key for /v1 (SKYLAUNCH_API_KEYS): enter one.'; return; }
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
