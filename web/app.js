// Entry point: sign-in, sign-out and the hash router (#/sims, #/sims/<id>, #/new-sim,
// #/groups, #/network). Each view module renders into <main> and may return a cleanup function
// (to stop its live refresh) that runs when the view changes.

import * as api from './api.js';
import { h, clear, busy, errorSlot, field } from './ui.js';
import { renderSimList, renderNewSim } from './sims.js';
import { renderSimDetail } from './sim-detail.js';
import { renderGroups } from './groups.js';
import { renderNetwork } from './network.js';

const main = document.getElementById('main');
let stopView = null;
let signInMessage = '';

api.setExpiredHandler((message) => {
  signInMessage = message;
  route();
});

function renderSignIn() {
  // Several calls may fail with 401 at once: one sign-in form, never replaced while in use.
  const shown = document.getElementById('sign-in-form');
  if (shown) {
    const note = document.getElementById('sign-in-message');
    if (note) note.textContent = signInMessage;
    else if (signInMessage) shown.querySelector('h1').after(h('p', { class: 'notice', role: 'status', id: 'sign-in-message' }, signInMessage));
    return;
  }
  document.getElementById('nav').hidden = true;
  document.getElementById('sign-out').hidden = true;
  document.getElementById('who').textContent = '';
  const id = h('input', { name: 'authKeyId', autocomplete: 'username', required: true, placeholder: 'keyId-…', id: 'auth-key-id' });
  const secret = h('input', { name: 'authKey', type: 'password', autocomplete: 'current-password', required: true, placeholder: 'secret-…', id: 'auth-key' });
  const slot = errorSlot();
  const submit = h('button', { type: 'submit', class: 'primary', id: 'sign-in' }, 'Sign in');
  const form = h('form', { class: 'card signin', id: 'sign-in-form' },
    h('h1', {}, 'Sign in to arcd'),
    signInMessage ? h('p', { class: 'notice', role: 'status', id: 'sign-in-message' }, signInMessage) : null,
    field('Auth key ID', id),
    field('Auth key secret', secret, 'The root key is in <data_dir>/root-credentials.json on the arcd host.'),
    slot,
    h('div', { class: 'actions' }, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const ok = await busy(submit, slot, () => api.signIn(id.value.trim(), secret.value), 'Signing in…');
    if (ok) {
      signInMessage = '';
      if (!location.hash || location.hash === '#/' || location.hash === '#/signin') location.hash = '#/sims';
      route();
    }
  });
  clear(main, form);
  id.focus();
}

function signOut() {
  api.clearSession();
  signInMessage = 'Signed out.';
  location.hash = '#/signin';
  route();
}

async function route() {
  if (stopView) {
    stopView();
    stopView = null;
  }
  const current = api.session();
  if (!current) {
    renderSignIn();
    return;
  }
  document.getElementById('nav').hidden = false;
  document.getElementById('sign-out').hidden = false;
  document.getElementById('who').textContent = current.operatorId || '';
  const parts = (location.hash || '#/sims').slice(2).split('/').map(decodeURIComponent);
  const view = parts[0] || 'sims';
  for (const link of document.querySelectorAll('#nav a')) {
    const active = link.dataset.view === (view === 'new-sim' ? 'sims' : view);
    if (active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  clear(main);
  try {
    if (view === 'sims' && parts[1]) stopView = await renderSimDetail(main, parts[1]);
    else if (view === 'new-sim') stopView = await renderNewSim(main);
    else if (view === 'groups') stopView = await renderGroups(main);
    else if (view === 'network') stopView = await renderNetwork(main);
    else stopView = await renderSimList(main);
  } catch (err) {
    if (err.code !== 'SIGNED_OUT' && api.session()) {
      clear(main, h('p', { class: 'error', role: 'alert' }, `Could not show this view: ${err.message}`));
    }
  }
}

document.getElementById('sign-out').addEventListener('click', signOut);
window.addEventListener('hashchange', route);
route();
