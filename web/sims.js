// The SIM list (server-side cursor paging, search, live columns refreshed in place) and the
// "new SIM" form (standalone virtual SIM, or a virtual subscriber added to an IoT SIM).

import * as api from './api.js';
import {
  h, clear, busy, errorSlot, showError, field, formatBytes, ago, tagName, rateTracker, rateText, lastSeenAt, groupNames, primaryImsi,
} from './ui.js';
import { renderDeviceConfig } from './device-config.js';

const PAGE_SIZE = 50; // listSims allows 1000, searchSims 100: 50 rows keep the DOM small
const REFRESH_MS = 3000;

// The list's state survives navigation to a SIM and back (filters and page).
const state = { field: 'name', text: '', status: '', keys: [null], sort: { index: null, dir: 'ascending' } };

const SEARCH_FIELDS = [
  ['name', 'Name'],
  ['imsi', 'IMSI'],
  ['sim_id', 'SIM ID'],
  ['group', 'Group name'],
  ['tag', 'Tag value'],
];

function listPath(key) {
  const params = new URLSearchParams();
  params.set('limit', String(PAGE_SIZE));
  if (key) params.set('last_evaluated_key', key);
  const text = state.text.trim();
  if (!text && !state.status) return `/v1/sims?${params}`;
  if (text) params.set(state.field, text);
  if (state.status) params.set('status', state.status);
  params.set('search_type', 'and');
  return `/v1/query/sims?${params}`;
}

// The live part of a SIM row, from the official session fields and arcd's arcdSessionStats.
function liveCells(sim, rate) {
  const stats = sim.arcdSessionStats;
  const arc = sim.arcSessionStatus;
  const online = !!(stats && stats.deviceOnline);
  const seen = lastSeenAt(stats);
  return {
    online: online ? '● online' : (arc ? '○ offline' : '– no session'),
    onlineClass: online ? 'dev-online' : 'dev-offline',
    seen: seen ? ago(seen) : 'never',
    handshake: stats && stats.lastHandshakeAt ? ago(stats.lastHandshakeAt) : 'never',
    endpoint: (stats && stats.deviceEndpoint) || '–',
    rate: stats ? rateText(rate) : '–',
    traffic: stats ? `${formatBytes(stats.rxBytes)} / ${formatBytes(stats.txBytes)}` : '–',
    rp: arc && arc.placement ? arc.placement.region : '–',
    address: arc ? arc.arcClientPeerIpAddress : '–',
  };
}

// [label, class, sort value or null]: the page's rows sort by any column with a value.
const stats = (sim) => sim.arcdSessionStats || {};
const COLUMNS = [
  ['Name', 'name', (sim) => tagName(sim).toLowerCase()],
  ['SIM ID', 'simid narrow-hide', (sim) => sim.simId],
  ['IMSI', 'imsi narrow-hide', primaryImsi],
  ['Type', 'type wide-only', (sim) => sim.type],
  ['Status', 'status', (sim) => sim.status],
  ['Group', 'group narrow-hide', (sim, ctx) => (sim.groupId ? ctx.groups.get(sim.groupId) || sim.groupId : '').toLowerCase()],
  ['Device', 'online', (sim) => (stats(sim).deviceOnline ? 0 : sim.arcSessionStatus ? 1 : 2)],
  ['Last seen', 'seen', (sim) => -lastSeenAt(stats(sim))],
  ['Last handshake', 'handshake narrow-hide', (sim) => -(stats(sim).lastHandshakeAt || 0)],
  ['Throughput', 'rate narrow-hide', (sim, ctx) => { const r = ctx.rates.get(sim.simId); return r ? -(r.rx + r.tx) : 0; }],
  ['Device endpoint', 'endpoint narrow-hide', (sim) => stats(sim).deviceEndpoint || ''],
  ['RX / TX', 'traffic wide-only', (sim) => -((stats(sim).rxBytes || 0) + (stats(sim).txBytes || 0))],
  ['Rendezvous point', 'rp wide-only', (sim) => (sim.arcSessionStatus ? sim.arcSessionStatus.placement.region : '')],
  ['Client address', 'address', (sim) => (sim.arcSessionStatus ? sim.arcSessionStatus.arcClientPeerIpAddress : '')],
];
const LIVE_KEYS = ['online', 'seen', 'handshake', 'rate', 'endpoint', 'traffic', 'rp', 'address'];

function simRow(sim, ctx) {
  const live = liveCells(sim, ctx.rates.get(sim.simId));
  const name = tagName(sim);
  const link = h('a', { href: `#/sims/${encodeURIComponent(sim.simId)}` }, name || '(no name)');
  const classOf = (key) => COLUMNS.find(([, cls]) => cls.split(' ')[0] === key)[1];
  const cells = Object.fromEntries(LIVE_KEYS.map((key) => [key, h('td', { class: classOf(key) }, live[key])]));
  cells.online.className = `online ${live.onlineClass}`;
  const groupName = sim.groupId ? ctx.groups.get(sim.groupId) || sim.groupId : '–';
  const row = h('tr', { dataset: { simId: sim.simId } },
    h('td', { class: 'name' }, link),
    h('td', { class: 'simid mono narrow-hide' }, sim.simId),
    h('td', { class: 'imsi mono narrow-hide' }, primaryImsi(sim)),
    h('td', { class: 'type wide-only' }, sim.type),
    h('td', { class: `status status-${sim.status}` }, sim.status),
    h('td', { class: 'group narrow-hide', title: sim.groupId || undefined }, groupName),
    LIVE_KEYS.map((key) => cells[key]));
  row.liveCells = cells;
  return row;
}

// Updates the live cells of rows already shown; false when the page's rows changed.
function refreshRows(tbody, sims, ctx) {
  const rows = [...tbody.rows];
  if (rows.length !== sims.length || rows.some((row, i) => row.dataset.simId !== sims[i].simId)) return false;
  sims.forEach((sim, i) => {
    const live = liveCells(sim, ctx.rates.get(sim.simId));
    const cells = rows[i].liveCells;
    for (const key of LIVE_KEYS) cells[key].textContent = live[key];
    cells.online.className = `online ${live.onlineClass}`;
  });
  return true;
}

export async function renderSimList(main) {
  const slot = errorSlot();
  const fieldSelect = h('select', { id: 'search-field', 'aria-label': 'Search in' },
    SEARCH_FIELDS.map(([value, label]) => h('option', { value, selected: value === state.field }, label)));
  const text = h('input', { type: 'search', id: 'search-text', placeholder: 'Search (2+ characters)', value: state.text, 'aria-label': 'Search text' });
  const status = h('select', { id: 'search-status', 'aria-label': 'Status' },
    [['', 'Any status'], ['active', 'active'], ['inactive', 'inactive'], ['suspended', 'suspended'], ['terminated', 'terminated']]
      .map(([value, label]) => h('option', { value, selected: value === state.status }, label)));
  const search = h('button', { type: 'submit' }, 'Search');
  const reset = h('button', { type: 'button' }, 'Clear');
  const prev = h('button', { type: 'button', id: 'page-prev' }, '‹ Previous');
  const next = h('button', { type: 'button', id: 'page-next' }, 'Next ›');
  const pageInfo = h('span', { class: 'page-info', id: 'page-info' });
  const total = h('span', { class: 'count', id: 'sim-total' });
  const tbody = h('tbody', { id: 'sim-rows' });
  const headers = COLUMNS.map(([label, cls], index) => {
    const button = h('button', { type: 'button', title: `Sort this page by ${label}` }, label);
    const th = h('th', { class: `${cls} sortable`, scope: 'col', dataset: { sort: String(index) } }, button);
    button.addEventListener('click', () => {
      state.sort = { index, dir: state.sort.index === index && state.sort.dir === 'ascending' ? 'descending' : 'ascending' };
      paint(lastItems);
    });
    return th;
  });
  const table = h('table', { class: 'sims', id: 'sim-table' }, h('thead', {}, h('tr', {}, headers)), tbody);
  const refreshed = h('span', { class: 'muted', id: 'refreshed' });

  clear(main,
    h('div', { class: 'view-head' },
      h('h1', {}, 'SIMs ', total),
      h('a', { class: 'button primary', href: '#/new-sim', id: 'new-sim' }, '+ New virtual SIM')),
    h('form', { class: 'filters', id: 'sim-search' }, fieldSelect, text, status, search, reset),
    slot,
    h('div', { class: 'table-wrap' }, table),
    h('div', { class: 'pager' }, prev, pageInfo, next, refreshed));

  const ctx = { groups: new Map(), rates: new Map() };
  const rate = rateTracker();
  let lastItems = [];
  let nextKey = null;
  let loading = false;
  let stopped = false;

  // Sorting orders the rows of the page shown (the API pages by SIM ID and has no sort).
  function sorted(items) {
    if (state.sort.index === null) return items;
    const value = COLUMNS[state.sort.index][2];
    const sign = state.sort.dir === 'descending' ? -1 : 1;
    return [...items].sort((a, b) => {
      const [x, y] = [value(a, ctx), value(b, ctx)];
      return sign * (x < y ? -1 : x > y ? 1 : 0) || (a.simId < b.simId ? -1 : 1);
    });
  }

  function paint(items, live = false) {
    lastItems = items;
    const rows = sorted(items);
    headers.forEach((th, i) => {
      if (i === state.sort.index) th.setAttribute('aria-sort', state.sort.dir);
      else th.removeAttribute('aria-sort');
    });
    if (!live || !refreshRows(tbody, rows, ctx)) {
      clear(tbody, rows.length ? rows.map((sim) => simRow(sim, ctx))
        : h('tr', {}, h('td', { colspan: COLUMNS.length, class: 'empty' }, 'No SIMs match.')));
    }
  }

  async function loadTotal() {
    const counts = await api.get('/v1/arcd/sim_counts');
    total.textContent = `· ${counts.total} in all, ${counts.notTerminated} not terminated`;
  }

  async function load({ live = false } = {}) {
    if (loading) return;
    loading = true;
    const key = state.keys[state.keys.length - 1];
    try {
      if (!live) tbody.setAttribute('aria-busy', 'true');
      const result = await api.page(listPath(key));
      if (stopped) return;
      nextKey = result.nextKey;
      for (const sim of result.items) ctx.rates.set(sim.simId, rate(sim.simId, sim.arcdSessionStats));
      paint(result.items, live);
      pageInfo.textContent = `Page ${state.keys.length} · ${result.items.length} SIM${result.items.length === 1 ? '' : 's'}`;
      prev.disabled = state.keys.length <= 1;
      next.disabled = !nextKey;
      refreshed.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
      slot.hidden = true;
    } catch (err) {
      if (!stopped) showError(slot, err);
    } finally {
      tbody.removeAttribute('aria-busy');
      loading = false;
    }
  }

  main.querySelector('#sim-search').addEventListener('submit', (event) => {
    event.preventDefault();
    state.field = fieldSelect.value;
    state.text = text.value;
    state.status = status.value;
    state.keys = [null];
    busy(search, slot, () => load(), 'Searching…');
  });
  reset.addEventListener('click', () => {
    state.text = '';
    state.status = '';
    text.value = '';
    status.value = '';
    state.keys = [null];
    load();
  });
  next.addEventListener('click', () => {
    if (!nextKey) return;
    state.keys.push(nextKey);
    busy(next, slot, () => load(), 'Loading…');
  });
  prev.addEventListener('click', () => {
    if (state.keys.length <= 1) return;
    state.keys.pop();
    busy(prev, slot, () => load(), 'Loading…');
  });

  // The rows first (the first render is what a 10k-SIM operator waits for); group names and the
  // total follow, then the rows are repainted with the names.
  await load();
  Promise.all([
    api.all('/v1/groups').then((groups) => { ctx.groups = groupNames(groups); if (!stopped) paint(lastItems); }),
    loadTotal(),
  ]).catch((err) => { if (!stopped) showError(slot, err); });
  // Live columns: the rows shown (the current page, one request) every few seconds.
  const timer = setInterval(() => { if (!document.hidden) load({ live: true }); }, REFRESH_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}

export async function renderNewSim(main) {
  const groups = await api.all('/v1/groups').catch(() => []);
  const kindStandalone = h('input', { type: 'radio', name: 'kind', value: 'standalone', id: 'kind-standalone', checked: true });
  const kindIot = h('input', { type: 'radio', name: 'kind', value: 'iot', id: 'kind-iot' });
  const name = h('input', { id: 'new-sim-name', placeholder: 'e.g. sensor-12', maxlength: 200 });
  const iotSim = h('input', { id: 'new-sim-iot', placeholder: 'SIM ID (ICCID) of an imported IoT SIM', class: 'mono' });
  const group = h('select', { id: 'new-sim-group' }, h('option', { value: '' }, '(no group)'),
    groups.map((g) => h('option', { value: g.groupId, title: g.groupId }, tagName(g) || '(no name)')));
  const iotField = field('IoT SIM', iotSim, 'Adds a virtual subscriber (planArc01) to this SIM: the device is seen as the IoT SIM.');
  iotField.hidden = true;
  const slot = errorSlot();
  const create = h('button', { type: 'submit', class: 'primary', id: 'create-sim' }, 'Create');
  const result = h('div', { id: 'new-sim-result' });
  const form = h('form', { class: 'card', id: 'new-sim-form' },
    h('fieldset', {}, h('legend', {}, 'What to create'),
      h('label', { class: 'inline' }, kindStandalone, ' Standalone virtual SIM'),
      h('label', { class: 'inline' }, kindIot, ' Virtual subscriber of an IoT SIM')),
    field('Name (tag "name")', name),
    iotField,
    field('Group', group),
    slot,
    h('div', { class: 'actions' }, create));
  for (const radio of [kindStandalone, kindIot]) {
    radio.addEventListener('change', () => { iotField.hidden = !kindIot.checked; });
  }
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const made = await busy(create, slot, () => createDevice({
      iot: kindIot.checked ? iotSim.value.trim() : '',
      name: name.value.trim(),
      groupId: group.value,
    }), 'Creating…');
    if (made) {
      form.hidden = true;
      renderDeviceConfig(result, made.sim, made.privateKey, { fresh: true });
    }
  });
  clear(main, h('div', { class: 'view-head' }, h('h1', {}, 'New virtual SIM'), h('a', { href: '#/sims' }, '← SIMs')), form, result);
  name.focus();
}

// Creates the SIM or subscriber, then names and groups it. Returns the SIM (with its session)
// and the one-time private key.
async function createDevice({ iot, name, groupId }) {
  let sim;
  let privateKey;
  if (iot) {
    const target = await api.get(`/v1/sims/${api.enc(iot)}`);
    const iccid = target.activeProfileId;
    const profile = await api.post(`/v1/sims/${api.enc(iot)}/profiles/${api.enc(iccid)}/add_subscription`,
      { subscription: 'planArc01', type: 'virtual' });
    privateKey = profile.arcClientPeerPrivateKey;
    sim = await api.get(`/v1/sims/${api.enc(iot)}`);
  } else {
    sim = await api.post('/v1/sims', { type: 'virtual', subscription: 'planArc01' });
    privateKey = sim.profiles[sim.simId].arcClientPeerPrivateKey;
  }
  if (name) sim = await api.put(`/v1/sims/${api.enc(sim.simId)}/tags`, [{ tagName: 'name', tagValue: name }]);
  if (groupId) sim = await api.post(`/v1/sims/${api.enc(sim.simId)}/set_group`, { groupId });
  return { sim, privateKey };
}
