// Small DOM helpers shared by the views: element building (never innerHTML with API data),
// formatting, progress on long actions and errors shown next to what failed.

// h('button', { class: 'x', onclick: fn }, 'text', child...) → element.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, '');
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function formatBytes(n) {
  if (n === undefined || n === null) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = Number(n);
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

// "12 s ago", "3 min ago", "2 h ago", "4 d ago" from a UNIX millisecond time.
export function ago(ms) {
  if (!ms) return 'never';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function dateTime(ms) {
  if (!ms) return '–';
  return new Date(ms).toLocaleString();
}

// An error line for `err` (an ApiError or any Error), placed in `slot` (an element).
export function showError(slot, err) {
  const text = err && err.code && err.status ? `${err.message} (${err.code}, HTTP ${err.status})` : String(err && err.message ? err.message : err);
  clear(slot, h('span', { class: 'error', role: 'alert' }, text));
  slot.hidden = false;
}

export function errorSlot() {
  return h('div', { class: 'error-slot', hidden: true });
}

// Runs `work` with the button disabled and a progress label, reporting failure in `slot`.
// Returns work's result, or undefined when it failed.
export async function busy(button, slot, work, label = 'Working…') {
  const original = button.textContent;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  button.textContent = label;
  if (slot) {
    slot.hidden = true;
    slot.replaceChildren();
  }
  try {
    return await work();
  } catch (err) {
    if (slot) showError(slot, err);
    else toast(err.message, true);
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
    button.textContent = original;
  }
}

let toastTimer;
export function toast(message, isError = false) {
  const el = document.getElementById('toast');
  el.textContent = message;
  el.className = isError ? 'show error' : 'show';
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.className = ''; }, 4000);
}

// A modal asking the operator to type `expected` before `action` runs. Resolves to true when
// confirmed (and the action succeeded), false when cancelled.
export function typedConfirm(title, explanation, expected, action) {
  return new Promise((resolve) => {
    const input = h('input', { type: 'text', autocomplete: 'off', 'aria-label': `Type ${expected} to confirm`, id: 'confirm-input' });
    const slot = errorSlot();
    const ok = h('button', { type: 'submit', class: 'danger', disabled: true, id: 'confirm-ok' }, title);
    const cancel = h('button', { type: 'button', id: 'confirm-cancel' }, 'Cancel');
    const form = h('form', { method: 'dialog' },
      h('h2', {}, title),
      h('p', {}, explanation),
      h('label', { for: 'confirm-input' }, 'Type ', h('code', {}, expected), ' to confirm:'),
      input, slot,
      h('div', { class: 'actions' }, cancel, ok));
    const dialog = h('dialog', { class: 'confirm' }, form);
    input.addEventListener('input', () => { ok.disabled = input.value.trim() !== expected; });
    const close = (result) => { dialog.close(); dialog.remove(); resolve(result); };
    cancel.addEventListener('click', () => close(false));
    dialog.addEventListener('cancel', () => close(false));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (input.value.trim() !== expected) return;
      const done = await busy(ok, slot, async () => { await action(); return true; });
      if (done) close(true);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}

export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), control, hint ? h('small', {}, hint) : null);
}

export function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text);
  }
  // Fallback for contexts without the async clipboard API.
  const area = h('textarea', { class: 'offscreen' });
  area.value = text;
  document.body.append(area);
  area.select();
  document.execCommand('copy');
  area.remove();
  return Promise.resolve();
}

export function tagName(obj) {
  return (obj && obj.tags && obj.tags.name) || '';
}

// "1.2 KB/s" from bytes per second.
export function formatRate(bytesPerSecond) {
  return `${formatBytes(Math.round(bytesPerSecond))}/s`;
}

// Throughput per device from two readings of its byte counters (arcd gives totals, not rates):
// rate(key, stats) → { rx, tx } in bytes per second since the previous reading of `key`, or
// null for the first reading, or when the counters went back (a new session starts from zero).
export function rateTracker() {
  const previous = new Map();
  return (key, stats) => {
    if (!stats) {
      previous.delete(key);
      return null;
    }
    const now = performance.now();
    const last = previous.get(key);
    previous.set(key, { at: now, rx: stats.rxBytes, tx: stats.txBytes });
    if (!last || now - last.at < 500 || stats.rxBytes < last.rx || stats.txBytes < last.tx) return null;
    const seconds = (now - last.at) / 1000;
    return { rx: (stats.rxBytes - last.rx) / seconds, tx: (stats.txBytes - last.tx) / seconds };
  };
}

export function rateText(rate) {
  return rate ? `↓ ${formatRate(rate.rx)} ↑ ${formatRate(rate.tx)}` : 'measuring…';
}

// "Last seen": the latest packet from the device (arcd's lastSeenAt), else its last handshake.
export function lastSeenAt(stats) {
  return (stats && (stats.lastSeenAt || stats.lastHandshakeAt)) || 0;
}

// Group names by id, for lists that show a name with the id on hover.
export function groupNames(groups) {
  return new Map(groups.map((g) => [g.groupId, tagName(g) || '(no name)']));
}

export function primaryImsi(sim) {
  const profile = sim.profiles && sim.profiles[sim.activeProfileId];
  return profile ? profile.primaryImsi : '';
}
