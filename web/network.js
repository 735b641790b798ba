// VPGs (list, create, terminate, device-to-device switch) and the rendezvous points (arcd
// extension GET /v1/arcd/rendezvous_points: endpoint, public key, online devices, traffic).

import * as api from './api.js';
import { h, clear, busy, errorSlot, showError, field, formatBytes, tagName, typedConfirm, toast } from './ui.js';

const REFRESH_MS = 5000;
const REGIONS = ['ap-northeast-1', 'eu-central-1', 'us-west-2', 'ap-southeast-2'];

function rpTable(rps) {
  return h('table', { id: 'rp-table' },
    h('thead', {}, h('tr', {}, ['Rendezvous point', 'Endpoint', 'Public key', 'Pool', 'Allowed IPs', 'Online / sessions', 'RX / TX']
      .map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rps.map((rp) => h('tr', { dataset: { rpId: rp.rendezvousPointId } },
      h('td', {}, `${rp.displayName} (${rp.rendezvousPointId})`),
      h('td', { class: 'mono' }, rp.endpoint),
      h('td', { class: 'mono key' }, rp.publicKey),
      h('td', { class: 'mono' }, rp.pool),
      h('td', { class: 'mono' }, rp.allowedIPs.join(', ')),
      h('td', { class: 'rp-online' }, `${rp.onlineDevices} / ${rp.sessions}`),
      h('td', {}, `${formatBytes(rp.rxBytes)} / ${formatBytes(rp.txBytes)}`)))));
}

export async function renderNetwork(main) {
  const rpBox = h('div', { class: 'table-wrap', id: 'rp-box' });
  const rpSlot = errorSlot();
  const vpgBox = h('div', { class: 'table-wrap', id: 'vpg-box' });
  const vpgSlot = errorSlot();

  const name = h('input', { id: 'vpg-name', placeholder: 'e.g. factory-lan' });
  const region = h('select', { id: 'vpg-region' }, REGIONS.map((r) => h('option', { value: r }, r)));
  const subnet = h('input', { id: 'vpg-subnet', placeholder: '10.128.0.0/9' });
  const d2d = h('input', { type: 'checkbox', id: 'vpg-d2d' });
  const internet = h('input', { type: 'checkbox', id: 'vpg-internet', checked: true });
  const create = h('button', { type: 'submit', class: 'primary', id: 'create-vpg' }, 'Create VPG');
  const form = h('form', { class: 'inline-form', id: 'new-vpg-form' },
    field('Name', name), field('Region', region), field('Device subnet (CIDR)', subnet, 'Empty: 10.128.0.0/9'),
    h('label', { class: 'inline' }, d2d, ' device-to-device'),
    h('label', { class: 'inline' }, internet, ' internet gateway'), create);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = {
      type: 14, placement: { region: region.value }, arcdDeviceToDevice: d2d.checked, useInternetGateway: internet.checked,
    };
    if (name.value.trim()) body.tags = { name: name.value.trim() };
    if (subnet.value.trim()) body.deviceSubnetCidrRange = subnet.value.trim();
    const vpg = await busy(create, vpgSlot, () => api.post('/v1/virtual_private_gateways', body), 'Creating…');
    if (vpg) { toast(`VPG ${vpg.vpgId} created`); name.value = ''; subnet.value = ''; await loadVpgs(); }
  });

  async function loadVpgs() {
    try {
      const vpgs = await api.all('/v1/virtual_private_gateways');
      clear(vpgBox, vpgs.length ? h('table', { id: 'vpg-table' },
        h('thead', {}, h('tr', {}, ['Name', 'VPG ID', 'Region', 'Device subnet', 'Internet', 'Status', 'Sessions', 'Device-to-device', ''].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, vpgs.map(vpgRow))) : h('p', { class: 'muted' }, 'No VPGs.'));
    } catch (err) {
      showError(vpgSlot, err);
    }
  }

  function vpgRow(v) {
    const live = v.status !== 'terminated';
    const toggle = h('input', { type: 'checkbox', checked: v.arcdDeviceToDevice, disabled: !live, 'aria-label': `Device-to-device for ${v.vpgId}` });
    toggle.addEventListener('change', async () => {
      toggle.disabled = true;
      try {
        await api.put(`/v1/arcd/virtual_private_gateways/${api.enc(v.vpgId)}/device_to_device`, { enabled: toggle.checked });
        toast(`Device-to-device ${toggle.checked ? 'on' : 'off'}`);
      } catch (err) {
        toggle.checked = !toggle.checked;
        showError(vpgSlot, err);
      } finally {
        toggle.disabled = false;
      }
    });
    const terminate = h('button', { type: 'button', class: 'link danger-text', disabled: !live }, 'Terminate');
    terminate.addEventListener('click', async () => {
      const done = await typedConfirm('Terminate VPG', 'Groups must stop naming this VPG first.', v.vpgId,
        () => api.post(`/v1/virtual_private_gateways/${api.enc(v.vpgId)}/terminate`));
      if (done) { toast('VPG terminated'); await loadVpgs(); }
    });
    return h('tr', { dataset: { vpgId: v.vpgId } }, h('td', {}, tagName(v) || '(no name)'), h('td', { class: 'mono' }, v.vpgId),
      h('td', {}, v.placement.region), h('td', { class: 'mono' }, v.deviceSubnetCidrRange),
      h('td', {}, v.useInternetGateway ? 'on' : 'off'), h('td', {}, v.status),
      h('td', {}, String(v.sessionStats.online)), h('td', {}, toggle), h('td', {}, terminate));
  }

  async function loadRps() {
    try {
      const rps = await api.get('/v1/arcd/rendezvous_points');
      clear(rpBox, rpTable(rps));
      rpSlot.hidden = true;
    } catch (err) {
      showError(rpSlot, err);
    }
  }

  clear(main,
    h('div', { class: 'view-head' }, h('h1', {}, 'Rendezvous points')),
    rpSlot, rpBox,
    h('div', { class: 'view-head' }, h('h1', {}, 'Virtual private gateways')),
    form, vpgSlot, vpgBox);
  await Promise.all([loadRps(), loadVpgs()]);
  const timer = setInterval(() => { if (!document.hidden) loadRps(); }, REFRESH_MS);
  return () => clearInterval(timer);
}
