// Groups: list, create, delete, and the configuration an operator edits (metadata and userdata,
// Harvest, Beam destination and pre-shared key, VPG membership), all through the official
// configuration API (namespaces SoracomAir, SoracomHarvest, SoracomBeam).

import * as api from './api.js';
import { h, clear, busy, errorSlot, field, tagName, typedConfirm, toast } from './ui.js';

// The Beam entry point the page edits: devices send to http://beam.soracom.io:8888/<path>.
export const BEAM_ENTRY = 'http://beam.soracom.io:8888/';

const conf = (group, namespace, key) => ((group.configuration || {})[namespace] || {})[key];

// Writes `values` ({key: value or undefined}) into one namespace: defined values with one PUT,
// undefined ones deleted (a key that was never set is fine).
async function writeNamespace(groupId, namespace, values, current) {
  const base = `/v1/groups/${api.enc(groupId)}/configuration/${namespace}`;
  const updates = Object.entries(values).filter(([, v]) => v !== undefined).map(([key, value]) => ({ key, value }));
  if (updates.length) await api.put(base, updates);
  for (const [key, value] of Object.entries(values)) {
    if (value === undefined && current[key] !== undefined) await api.del(`${base}/${api.enc(key)}`);
  }
}

function editor(group, vpgs, onSaved) {
  const metadata = conf(group, 'SoracomAir', 'metadata') || {};
  const beam = conf(group, 'SoracomBeam', BEAM_ENTRY) || {};
  const metaOn = h('input', { type: 'checkbox', id: 'cfg-metadata', checked: metadata.enabled === true });
  const metaWrite = h('input', { type: 'checkbox', id: 'cfg-metadata-write', checked: metadata.readonly === false });
  const userdata = h('textarea', { id: 'cfg-userdata', rows: 3 });
  userdata.value = conf(group, 'SoracomAir', 'userdata') || '';
  const harvest = h('input', { type: 'checkbox', id: 'cfg-harvest', checked: conf(group, 'SoracomHarvest', 'enabled') === true });
  const beamOn = h('input', { type: 'checkbox', id: 'cfg-beam', checked: !!beam.destination && beam.enabled !== false });
  const beamDest = h('input', { type: 'url', id: 'cfg-beam-destination', placeholder: 'https://example.com/in', value: beam.destination || '' });
  const beamPsk = h('input', { type: 'password', id: 'cfg-beam-psk', autocomplete: 'off', placeholder: beam.psk ? '(unchanged)' : 'optional' });
  const vpgId = conf(group, 'SoracomAir', 'vpgId') || '';
  const vpg = h('select', { id: 'cfg-vpg' }, h('option', { value: '' }, '(no VPG)'),
    vpgs.filter((v) => v.status !== 'terminated').map((v) => h('option', { value: v.vpgId, title: v.vpgId, selected: v.vpgId === vpgId },
      `${tagName(v) || '(no name)'} · ${v.deviceSubnetCidrRange}`)));
  const slot = errorSlot();
  const save = h('button', { type: 'submit', class: 'primary', id: 'cfg-save' }, 'Save configuration');
  const form = h('form', { class: 'card', id: 'group-editor' },
    h('h2', {}, `Configuration of ${tagName(group) || group.groupId}`),
    h('fieldset', {}, h('legend', {}, 'Metadata (100.127.100.127)'),
      h('label', { class: 'inline' }, metaOn, ' Metadata service on'),
      h('label', { class: 'inline' }, metaWrite, ' Devices may write (tags, ...)'),
      field('User data (GET /v1/userdata)', userdata)),
    h('fieldset', {}, h('legend', {}, 'Harvest (100.127.111.111)'),
      h('label', { class: 'inline' }, harvest, ' Harvest Data on')),
    h('fieldset', {}, h('legend', {}, `Beam (${BEAM_ENTRY})`),
      h('label', { class: 'inline' }, beamOn, ' Beam on'),
      field('Destination', beamDest), field('Pre-shared key (signature)', beamPsk, 'Leave empty to keep the current key.')),
    h('fieldset', {}, h('legend', {}, 'VPG'), field('Virtual private gateway', vpg, 'Applies to a SIM at its next session (re-)creation.')),
    slot, h('div', { class: 'actions' }, save));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const updated = await busy(save, slot, async () => {
      const id = group.groupId;
      await writeNamespace(id, 'SoracomAir', {
        metadata: { enabled: metaOn.checked, readonly: !metaWrite.checked },
        userdata: userdata.value ? userdata.value : undefined,
        vpgId: vpg.value || undefined,
      }, (group.configuration || {}).SoracomAir || {});
      await writeNamespace(id, 'SoracomHarvest', { enabled: harvest.checked }, {});
      if (beamDest.value.trim()) {
        const entry = { enabled: beamOn.checked, destination: beamDest.value.trim() };
        const psk = beamPsk.value || beam.psk;
        if (psk) entry.psk = psk;
        await writeNamespace(id, 'SoracomBeam', { [BEAM_ENTRY]: entry }, {});
      } else {
        await writeNamespace(id, 'SoracomBeam', { [BEAM_ENTRY]: undefined }, (group.configuration || {}).SoracomBeam || {});
      }
      return api.get(`/v1/groups/${api.enc(id)}`);
    }, 'Saving…');
    if (updated) { toast('Configuration saved'); onSaved(updated); }
  });
  return form;
}

export async function renderGroups(main, selected) {
  const [groups, vpgs] = await Promise.all([api.all('/v1/groups'), api.all('/v1/virtual_private_gateways').catch(() => [])]);
  const listSlot = errorSlot();
  const editorBox = h('div', { id: 'group-editor-box' });
  const newName = h('input', { id: 'new-group-name', placeholder: 'group name', 'aria-label': 'New group name', required: true });
  const create = h('button', { type: 'submit', class: 'primary', id: 'create-group' }, 'Create group');
  const createForm = h('form', { class: 'inline-form', id: 'new-group-form' }, newName, create);
  createForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const group = await busy(create, listSlot, () => api.post('/v1/groups', { tags: { name: newName.value.trim() } }), 'Creating…');
    if (group) { toast(`Group ${tagName(group)} created`); await renderGroups(main, group.groupId); }
  });

  function open(group) {
    // Saved: the list's "On" column and the editor both show the stored configuration.
    clear(editorBox, editor(group, vpgs, (updated) => renderGroups(main, updated.groupId)));
  }

  const rows = groups.map((g) => {
    const edit = h('button', { type: 'button', class: 'link', dataset: { groupId: g.groupId } }, 'Edit');
    edit.addEventListener('click', () => open(g));
    const remove = h('button', { type: 'button', class: 'link danger-text' }, 'Delete');
    remove.addEventListener('click', async () => {
      const name = tagName(g) || g.groupId;
      const done = await typedConfirm('Delete group', 'SIMs in the group must be moved out first.', name,
        () => api.del(`/v1/groups/${api.enc(g.groupId)}`));
      if (done) { toast('Group deleted'); await renderGroups(main); }
    });
    const air = (g.configuration || {}).SoracomAir || {};
    const on = [
      air.metadata && air.metadata.enabled ? 'metadata' : null,
      conf(g, 'SoracomHarvest', 'enabled') ? 'Harvest' : null,
      Object.keys((g.configuration || {}).SoracomBeam || {}).length ? 'Beam' : null,
      air.vpgId ? `VPG ${air.vpgId.slice(0, 8)}…` : null,
    ].filter(Boolean).join(', ') || '–';
    return h('tr', { dataset: { groupId: g.groupId } }, h('td', {}, tagName(g) || '(no name)'), h('td', { class: 'mono narrow-hide' }, g.groupId),
      h('td', {}, on), h('td', { class: 'nowrap' }, edit, ' ', remove));
  });
  clear(main,
    h('div', { class: 'view-head' }, h('h1', {}, 'Groups')),
    createForm, listSlot,
    h('div', { class: 'table-wrap' }, h('table', { id: 'groups-table' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col', class: 'narrow-hide' }, 'Group ID'), h('th', { scope: 'col' }, 'On'), h('th', { scope: 'col' }, ''))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 4, class: 'empty' }, 'No groups yet.'))))),
    editorBox);
  const chosen = groups.find((g) => g.groupId === selected);
  if (chosen) open(chosen);
  return null;
}

