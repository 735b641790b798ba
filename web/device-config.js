// The device's side of a session, shown right after a key pair was made: a wg-quick file (copy,
// download, QR code made here in the browser) and the arc.json of the official Arc client
// (soratun). The private key exists only in this answer: arcd keeps no copy.

import qrcode from './vendor/qrcode.js';
import { h, clear, copyText, toast } from './ui.js';

// arcd's resolver inside the tunnel (platform names; others only with services.dns_upstreams).
const DNS = '100.127.0.53';
const MTU = 1420;
const KEEPALIVE = 25;

export function wgQuickConfig(session, privateKey) {
  return [
    '[Interface]',
    `PrivateKey = ${privateKey}`,
    `Address = ${session.arcClientPeerIpAddress}/32`,
    `DNS = ${DNS}`,
    `MTU = ${MTU}`,
    '',
    '[Peer]',
    `PublicKey = ${session.arcServerPeerPublicKey}`,
    `Endpoint = ${session.arcServerEndpoint}`,
    `AllowedIPs = ${session.arcAllowedIPs.join(', ')}`,
    `PersistentKeepalive = ${KEEPALIVE}`,
    '',
  ].join('\n');
}

// soratun's configuration file (arc.json); `soratun up --config arc.json` uses it as is.
export function arcJson(sim, session, privateKey, publicKey) {
  return JSON.stringify({
    privateKey,
    publicKey,
    simId: sim.simId,
    logLevel: 2,
    enableMetrics: true,
    interface: 'soratun0',
    additionalAllowedIPs: null,
    mtu: MTU,
    persistentKeepalive: KEEPALIVE,
    postUp: null,
    postDown: null,
    arcSessionStatus: {
      arcServerPeerPublicKey: session.arcServerPeerPublicKey,
      arcServerEndpoint: session.arcServerEndpoint,
      arcAllowedIPs: session.arcAllowedIPs,
      arcClientPeerIpAddress: session.arcClientPeerIpAddress,
    },
  }, null, 2) + '\n';
}

function downloadLink(label, filename, text, mime, id) {
  const url = URL.createObjectURL(new Blob([text], { type: mime }));
  return h('a', { class: 'button', href: url, download: filename, id }, label);
}

function qrSvg(text) {
  const qr = qrcode(0, 'L');
  qr.addData(text);
  qr.make();
  // The library builds the SVG markup from the config alone (no API strings besides it).
  const holder = h('div', { class: 'qr', id: 'wg-qr', role: 'img', 'aria-label': 'QR code of the WireGuard configuration' });
  holder.innerHTML = qr.createSvgTag({ cellSize: 4, margin: 8, scalable: true });
  return holder;
}

// Renders the configuration panel for `sim` (with arcSessionStatus) and its private key.
export function renderDeviceConfig(container, sim, privateKey, { fresh = false } = {}) {
  const session = sim.arcSessionStatus;
  if (!session || !privateKey) {
    clear(container, h('p', { class: 'error', role: 'alert' }, 'No session or no private key in the answer: renew the credentials to get a configuration.'));
    return;
  }
  const publicKey = session.arcClientPeerPublicKey;
  const conf = wgQuickConfig(session, privateKey);
  const json = arcJson(sim, session, privateKey, publicKey);
  const base = (sim.tags && sim.tags.name) || sim.simId;
  const safe = base.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 40) || 'arc';
  const confText = h('pre', { class: 'config', id: 'wg-config', tabindex: '0' }, conf);
  const jsonText = h('pre', { class: 'config', id: 'arc-json', tabindex: '0' }, json);
  const copyConf = h('button', { type: 'button', id: 'copy-wg' }, 'Copy');
  copyConf.addEventListener('click', () => copyText(conf).then(() => toast('WireGuard configuration copied')));
  const copyJson = h('button', { type: 'button' }, 'Copy');
  copyJson.addEventListener('click', () => copyText(json).then(() => toast('arc.json copied')));
  clear(container,
    h('section', { class: 'card device-config', id: 'device-config' },
      h('h2', {}, fresh ? `Created ${sim.simId}` : `New credentials for ${sim.simId}`),
      h('p', { class: 'warning', role: 'alert' },
        'The private key is shown only once: arcd does not keep it. Save this configuration now; ',
        'if it is lost, renew the credentials on the SIM page.'),
      h('div', { class: 'config-grid' },
        h('div', {},
          h('h3', {}, 'WireGuard (wg-quick)'),
          confText,
          h('div', { class: 'actions' }, copyConf, downloadLink('Download .conf', `${safe}.conf`, conf, 'text/plain', 'download-wg'))),
        h('div', {}, h('h3', {}, 'QR code (WireGuard apps)'), qrSvg(conf))),
      h('h3', {}, 'arc.json (official Arc client, soratun)'),
      jsonText,
      h('div', { class: 'actions' }, copyJson, downloadLink('Download arc.json', 'arc.json', json, 'application/json', 'download-arc-json'),
        h('a', { class: 'button primary', href: `#/sims/${encodeURIComponent(sim.simId)}`, id: 'open-sim' }, 'Open SIM'))));
}
