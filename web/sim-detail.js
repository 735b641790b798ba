// One SIM: its state (live stats refreshed in place), the actions an operator takes on it, its
// session events and its Harvest data (table + chart).

import * as api from './api.js';
import {
  h, clear, busy, errorSlot, showError, field, formatBytes, ago, dateTime, tagName, typedConfirm, toast,
  rateTracker, rateText, lastSeenAt, groupNames, primaryImsi,
} from './ui.js';
import { renderDeviceConfig } from './device-config.js';
import { renderChart, renderDataTable, RANGES } from './chart.js';

const REFRESH_MS = 3000;

// When: "12 s ago (5/12/2026, 10:00:00)", or "never".
const when = (ms) => (ms ? `${ago(ms)} (${dateTime(ms)})` : 'never');

function facts(sim, groups, rate) {
  const arc = sim.arcSessionStatus;
  const stats = sim.arcdSessionStats;
  const online = !!(stats && stats.deviceOnline);
  const imsis = Object.values(sim.profiles || {}).flatMap((p) => Object.values(p.subscribers || {}))
    .filter((sub) => sub.status !== 'terminated').map((sub) => sub.imsi);
  const group = sim.groupId ? h('span', { title: sim.groupId }, groups.get(sim.groupId) || sim.groupId) : '–';
  const rows = [
    ['Status', sim.status],
    ['Type', sim.type],
    ['IMSI', primaryImsi(sim) || '–'],
    imsis.length > 1 ? ['Subscriber IMSIs', imsis.join(', ')] : null,
    ['Created', dateTime(sim.createdTime)],
    ['Group', group],
    ['Device', online ? '● online' : (arc ? '○ offline' : '– no session')],
    ['Last seen', when(lastSeenAt(stats))],
    ['Last handshake', when(stats && stats.lastHandshakeAt)],
    ['Throughput', stats ? rateText(rate) : '–'],
    ['Device endpoint', (stats && stats.deviceEndpoint) || '–'],
    ['RX / TX', stats ? `${formatBytes(stats.rxBytes)} / ${formatBytes(stats.txBytes)}` : '–'],
    ['Rendezvous point', arc ? `${arc.placement.region} (${arc.arcServerEndpoint})` : '–'],
    ['Client address', arc ? arc.arcClientPeerIpAddress : '–'],
    ['VPG', (arc && arc.vpgId) || '–'],
    ['Client public key', arc ? arc.arcClientPeerPublicKey : '–'],
    ['Termination protection', sim.terminationEnabled ? 'off (can be terminated)' : 'on'],
  ];
  return h('dl', { class: 'facts', id: 'sim-facts' }, rows.filter(Boolean).flatMap(([k, v]) => [h('dt', {}, k), h('dd', { dataset: { fact: k } }, v)]));
}

function section(title, id, ...children) {
  return h('section', { class: 'card', id }, h('h2', {}, title), ...children);
}

export async function renderSimDetail(main, simId) {
  const path = `/v1/sims/${api.enc(simId)}`;
  let sim = await api.get(path);
  const groups = await api.all('/v1/groups').catch(() => []);
  const names = groupNames(groups);
  const rate = rateTracker();
  let lastRate = rate(simId, sim.arcdSessionStats);
  const head = h('div', { class: 'view-head' });
  const factsBox = h('div', {});
  const configBox = h('div', { id: 'renew-result' });
  const eventsBox = h('div', { id: 'events-box' });
  const dataBox = h('div', { id: 'harvest-box' });
  const tagsBox = h('div', {});

  function paintHead() {
    clear(head, h('h1', {}, tagName(sim) || sim.simId, ' ', h('small', { class: 'mono' }, sim.simId)), h('a', { href: '#/sims' }, '← SIMs'));
    clear(factsBox, facts(sim, names, lastRate));
    paintTags();
    paintSwitch();
    paintActions();
  }

  // Rename and tags.
  const nameInput = h('input', { id: 'sim-name', value: tagName(sim) });
  const nameSlot = errorSlot();
  const rename = h('button', { type: 'submit', id: 'rename' }, 'Rename');
  const renameForm = h('form', { class: 'inline-form' }, field('Name', nameInput), rename, nameSlot);
  renameForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const updated = await busy(rename, nameSlot, () => api.put(`${path}/tags`, [{ tagName: 'name', tagValue: nameInput.value.trim() }]), 'Saving…');
    if (updated) { sim = updated; paintHead(); toast('Renamed'); }
  });
  const tagKey = h('input', { id: 'tag-key', placeholder: 'tag name', 'aria-label': 'Tag name' });
  const tagValue = h('input', { id: 'tag-value', placeholder: 'value', 'aria-label': 'Tag value' });
  const tagSlot = errorSlot();
  const addTag = h('button', { type: 'submit', id: 'add-tag' }, 'Set tag');
  const tagForm = h('form', { class: 'inline-form' }, tagKey, tagValue, addTag, tagSlot);
  tagForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!tagKey.value.trim()) return;
    const updated = await busy(addTag, tagSlot, () => api.put(`${path}/tags`, [{ tagName: tagKey.value.trim(), tagValue: tagValue.value }]), 'Saving…');
    if (updated) { sim = updated; tagKey.value = ''; tagValue.value = ''; paintHead(); }
  });
  function paintTags() {
    const entries = Object.entries(sim.tags || {}).filter(([k]) => k !== 'name');
    clear(tagsBox, entries.length ? h('ul', { class: 'tags' }, entries.map(([k, v]) => {
      const remove = h('button', { type: 'button', class: 'link', 'aria-label': `Remove tag ${k}` }, '×');
      remove.disabled = sim.status === 'terminated';
      remove.addEventListener('click', () => busy(remove, tagSlot, async () => {
        await api.del(`${path}/tags/${api.enc(k)}`);
        sim = await api.get(path);
        paintHead();
      }, '…'));
      return h('li', {}, h('code', {}, k), ' = ', v, ' ', remove);
    })) : h('p', { class: 'muted' }, 'No tags besides the name.'));
  }

  // Group.
  const groupSelect = h('select', { id: 'sim-group' }, h('option', { value: '' }, '(no group)'),
    groups.map((g) => h('option', { value: g.groupId, title: g.groupId, selected: g.groupId === sim.groupId }, tagName(g) || '(no name)')));
  const groupSlot = errorSlot();
  const setGroup = h('button', { type: 'submit', id: 'set-group' }, 'Apply');
  const groupForm = h('form', { class: 'inline-form' }, field('Group', groupSelect, 'A VPG change in the group applies at the next session reset.'), setGroup, groupSlot);
  groupForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const updated = await busy(setGroup, groupSlot, () => (groupSelect.value
      ? api.post(`${path}/set_group`, { groupId: groupSelect.value })
      : api.post(`${path}/unset_group`)), 'Applying…');
    if (updated) { sim = updated; paintHead(); toast(groupSelect.value ? 'Group set' : 'Group removed'); }
  });

  // Session: reset, renew credentials.
  const sessionSlot = errorSlot();
  const reset = h('button', { type: 'button', id: 'reset-session' }, 'Reset session');
  reset.addEventListener('click', async () => {
    const done = await busy(reset, sessionSlot, () => api.post(`${path}/delete_session`), 'Resetting…');
    if (done !== undefined) { sim = await api.get(path); paintHead(); loadEvents(); toast('Session reset: the device reconnects with its key'); }
  });
  const pubKey = h('input', { id: 'renew-public-key', class: 'mono', placeholder: 'device public key (base64), empty = generate a pair', 'aria-label': 'Device public key' });
  const renew = h('button', { type: 'submit', id: 'renew' }, 'Renew credentials');
  const renewForm = h('form', { class: 'inline-form' }, pubKey, renew);
  renewForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const key = pubKey.value.trim();
    const answer = await busy(renew, sessionSlot, () => api.put(`${path}/credentials/arc`, key ? { arcClientPeerPublicKey: key } : {}), 'Renewing…');
    if (!answer) return;
    sim = await api.get(path);
    paintHead();
    loadEvents();
    if (answer.arcClientPeerPrivateKey) renderDeviceConfig(configBox, sim, answer.arcClientPeerPrivateKey);
    else clear(configBox, h('p', { class: 'notice' }, 'Public key attached: configure the device with its own private key and the new session above.'));
    pubKey.value = '';
  });

  // Enabled: the official activate / deactivate operations as one switch. Only IoT SIMs have
  // them: the API refuses to deactivate a virtual SIM (SEM0032), which is active until
  // terminated, so its switch stays on, disabled, with the reason next to it.
  const statusSlot = errorSlot();
  const enabled = h('input', { type: 'checkbox', role: 'switch', id: 'sim-enabled' });
  const enabledLabel = h('span', { id: 'sim-enabled-state' });
  const enabledReason = h('p', { class: 'muted', id: 'sim-enabled-reason' });
  enabled.addEventListener('change', async () => {
    const action = enabled.checked ? 'activate' : 'deactivate';
    enabled.disabled = true;
    statusSlot.hidden = true;
    try {
      sim = await api.post(`${path}/${action}`);
      paintHead();
      toast(`Status: ${sim.status}`);
    } catch (err) {
      showError(statusSlot, err);
      paintSwitch();
    }
  });
  function paintSwitch() {
    enabled.checked = sim.status === 'active';
    enabledLabel.textContent = sim.status === 'active' ? 'Enabled' : `Disabled (${sim.status})`;
    let reason = '';
    if (sim.status === 'terminated') reason = 'A terminated SIM cannot be enabled again.';
    else if (sim.type === 'virtual') {
      reason = 'A virtual SIM cannot be disabled: the API refuses deactivate for virtual SIMs (they are active until terminated). '
        + 'To cut this device off, renew its credentials (its old key stops working) or terminate the SIM.';
    } else reason = 'Off = deactivate (status inactive), on = activate. This is the IoT SIM\'s own status: its virtual subscriber\'s Arc session is not changed by it.';
    enabled.disabled = sim.type === 'virtual' || sim.status === 'terminated';
    enabledReason.textContent = reason;
  }
  const statusButtons = ['activate', 'deactivate', 'suspend'].map((action) => {
    const button = h('button', { type: 'button', id: `status-${action}` }, action[0].toUpperCase() + action.slice(1));
    button.addEventListener('click', async () => {
      const updated = await busy(button, statusSlot, () => api.post(`${path}/${action}`), 'Saving…');
      if (updated) { sim = updated; paintHead(); toast(`Status: ${sim.status}`); }
    });
    return button;
  });

  // An IoT SIM's virtual subscriber (planArc01): terminating it ends its Arc session; the IoT SIM
  // stays. Found in the profiles, where each subscriber has its subscription.
  const subscriberSlot = errorSlot();
  const subscriberBox = h('div', { class: 'actions', id: 'virtual-subscribers' });
  function paintSubscribers() {
    const virtualSubs = Object.values(sim.profiles || {}).flatMap((profile) => Object.values(profile.subscribers || {})
      .filter((sub) => sub.subscription === 'planArc01' && sub.status !== 'terminated')
      .map((sub) => ({ iccid: profile.iccid, imsi: sub.imsi })));
    clear(subscriberBox, virtualSubs.length ? virtualSubs.map(({ iccid, imsi }) => {
      const button = h('button', { type: 'button', class: 'danger', dataset: { imsi } }, `Terminate virtual subscriber ${imsi}…`);
      button.addEventListener('click', async () => {
        const done = await typedConfirm('Terminate virtual subscriber', 'Its Arc session ends at once; the IoT SIM stays.', imsi,
          () => api.post(`${path}/profiles/${api.enc(iccid)}/subscribers/${api.enc(imsi)}/terminate`));
        if (done) { sim = await api.get(path); paintHead(); paintSubscribers(); loadEvents(); toast('Virtual subscriber terminated'); }
      });
      return button;
    }) : h('p', { class: 'muted' }, 'No virtual subscriber.'));
  }
  paintSubscribers();

  // Termination.
  const termSlot = errorSlot();
  const protect = h('button', { type: 'button', id: 'toggle-protection' });
  const paintProtect = () => { protect.textContent = sim.terminationEnabled ? 'Turn termination protection on' : 'Turn termination protection off'; };
  paintProtect();
  protect.addEventListener('click', async () => {
    const updated = await busy(protect, termSlot, () => api.post(`${path}/${sim.terminationEnabled ? 'disable' : 'enable'}_termination`), 'Saving…');
    if (updated) { sim = updated; paintHead(); paintProtect(); }
  });
  const terminate = h('button', { type: 'button', class: 'danger', id: 'terminate' }, 'Terminate SIM…');
  terminate.addEventListener('click', async () => {
    if (!sim.terminationEnabled) {
      showError(termSlot, new Error('Termination protection is on: turn it off first.'));
      return;
    }
    const done = await typedConfirm('Terminate SIM', 'The SIM stops working at once and cannot be used again.', sim.simId,
      async () => { sim = await api.post(`${path}/terminate`); });
    if (done) { paintHead(); loadEvents(); toast('SIM terminated'); }
  });

  // Session events.
  async function loadEvents() {
    try {
      const events = await api.get(`${path}/events/sessions?limit=20`);
      clear(eventsBox, events.length ? h('div', { class: 'table-wrap' }, h('table', { id: 'events-table' },
        h('thead', {}, h('tr', {}, ['Time', 'Event', 'IMSI', 'Address', 'VPG'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, events.map((e) => h('tr', {}, h('td', {}, dateTime(e.time)), h('td', {}, e.event), h('td', { class: 'mono' }, e.imsi),
          h('td', {}, e.ueIpAddress || '–'), h('td', { class: 'mono' }, e.vpgId || '–'))))))
        : h('p', { class: 'muted' }, 'No session events.'));
    } catch (err) {
      showError(eventsBox, err);
    }
  }

  // Harvest data: the entries of the chosen time range (newest 1000 at most).
  const dataRefresh = h('button', { type: 'button', id: 'harvest-refresh' }, 'Refresh data');
  const range = h('select', { id: 'harvest-range' }, RANGES.map(([value, label]) => h('option', { value, selected: value === '86400000' }, label)));
  const dataSlot = errorSlot();
  async function loadData() {
    const span = Number(range.value);
    const to = Date.now();
    const query = span ? `&from=${to - span}&to=${to}` : '';
    const entries = await api.get(`${path}/data?limit=1000&sort=desc${query}`);
    clear(dataBox, renderChart(entries, span ? [to - span, to] : null), renderDataTable(entries));
  }
  dataRefresh.addEventListener('click', () => busy(dataRefresh, dataSlot, loadData, 'Loading…'));
  range.addEventListener('change', () => busy(dataRefresh, dataSlot, loadData, 'Loading…'));

  // A terminated SIM takes no more changes (the API answers SEM0031): its actions are disabled,
  // with the reason shown once.
  const terminatedNote = h('p', { class: 'notice', id: 'terminated-note', role: 'status' },
    'This SIM is terminated: it can no longer be renamed, tagged, regrouped, reset, renewed or terminated.');
  function paintActions() {
    const over = sim.status === 'terminated';
    terminatedNote.hidden = !over;
    for (const control of [nameInput, rename, tagKey, tagValue, addTag, groupSelect, setGroup, reset, pubKey, renew, protect, terminate, ...statusButtons]) {
      control.disabled = over;
    }
  }

  clear(main, head, terminatedNote, factsBox, configBox,
    section('Name and tags', 'sim-tags', renameForm, tagsBox, tagForm),
    section('Group', 'sim-group-box', groupForm),
    section('Session', 'sim-session', h('div', { class: 'actions' }, reset), renewForm, sessionSlot),
    section('Enabled', 'sim-switch', h('label', { class: 'switch' }, enabled, enabledLabel), enabledReason,
      sim.type === 'virtual' ? null : h('div', { class: 'actions', id: 'sim-status' }, ...statusButtons), statusSlot),
    sim.type === 'virtual' ? null : section('Virtual subscriber', 'sim-subscribers', subscriberBox, subscriberSlot),
    section('Termination', 'sim-termination', h('div', { class: 'actions' }, protect, terminate), termSlot),
    section('Session events', 'sim-events', eventsBox),
    section('Harvest data', 'sim-harvest', h('div', { class: 'range' }, field('Time range', range), dataRefresh), dataSlot, dataBox));
  paintHead();
  await Promise.all([loadEvents(), loadData().catch((err) => showError(dataSlot, err))]);

  // Live facts of this SIM in place; the rest changes only through the actions above.
  let stopped = false;
  const timer = setInterval(async () => {
    if (document.hidden || stopped) return;
    try {
      const fresh = await api.get(path);
      if (!stopped) { sim = fresh; lastRate = rate(simId, sim.arcdSessionStats); clear(factsBox, facts(sim, names, lastRate)); }
    } catch {
      // Shown by the next action; a 401 already returned to the sign-in page.
    }
  }, REFRESH_MS);
  return () => { stopped = true; clearInterval(timer); };
}
