// Harvest data: the entries as a table and a time chart of their numeric JSON fields, drawn as
// plain SVG (no chart library).

import { h, dateTime } from './ui.js';

const SVG_NS = 'http://www.w3.org/2000/svg';
const MAX_SERIES = 6;

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

export function parseContent(entry) {
  if (typeof entry.content !== 'string') return entry.content;
  try {
    return JSON.parse(entry.content);
  } catch {
    return null;
  }
}

// Numeric fields of a JSON object, one level of nesting flattened as "a.b".
function numericFields(value, prefix = '', out = {}) {
  if (!value || typeof value !== 'object' || Array.isArray(value)) return out;
  for (const [key, v] of Object.entries(value)) {
    const name = prefix ? `${prefix}.${key}` : key;
    if (typeof v === 'number' && Number.isFinite(v)) out[name] = v;
    else if (!prefix && v && typeof v === 'object') numericFields(v, name, out);
  }
  return out;
}

// { fieldName: [[time, value], ...] } in time order, at most MAX_SERIES fields.
export function seriesOf(entries) {
  const series = {};
  const sorted = [...entries].sort((a, b) => a.time - b.time);
  for (const entry of sorted) {
    const fields = numericFields(parseContent(entry));
    for (const [name, value] of Object.entries(fields)) {
      if (!series[name] && Object.keys(series).length >= MAX_SERIES) continue;
      (series[name] ||= []).push([entry.time, value]);
    }
  }
  return series;
}

// The time ranges the SIM page offers: [milliseconds or '0' for all, label].
export const RANGES = [
  ['3600000', 'Last hour'],
  ['86400000', 'Last 24 hours'],
  ['604800000', 'Last 7 days'],
  ['2592000000', 'Last 30 days'],
  ['0', 'All (newest 1000)'],
];

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
// Tick steps a time axis may use; the first giving at most `maxTicks` ticks is taken.
const TIME_STEPS = [MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR,
  12 * HOUR, DAY, 2 * DAY, 7 * DAY];

// Round steps (1, 2, 5 × 10^n) for a value axis with about `count` ticks.
export function valueTicks(min, max, count = 3) {
  const raw = (max - min) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) ticks.push(+v.toPrecision(12));
  return ticks;
}

// Ticks at round local times between t0 and t1.
export function timeTicks(t0, t1, maxTicks = 6) {
  const step = TIME_STEPS.find((s) => (t1 - t0) / s <= maxTicks) || Math.ceil((t1 - t0) / maxTicks / DAY) * DAY;
  // Local midnight-aligned for day steps, else aligned to the step within the local day.
  const offset = new Date(t0).getTimezoneOffset() * MINUTE;
  const first = Math.ceil((t0 - offset) / step) * step + offset;
  const ticks = [];
  for (let t = first; t <= t1; t += step) ticks.push(t);
  return ticks;
}

// A tick label: the time, with the date when it changes from the previous tick (or the span
// is longer than a day, when the date alone says enough for day steps).
function timeLabel(t, previous, span) {
  const d = new Date(t);
  const date = d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
  const time = d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
  if (span > 3 * DAY) return date;
  if (previous === null || new Date(previous).toDateString() !== d.toDateString()) return `${date} ${time}`;
  return time;
}

// One panel per numeric field, each with its own value axis, over one dated time axis: fields
// of different units (°C, %) stay readable. `span` is [from, to] of the chosen range (the
// axis spans it), or null to span the data.
export function renderChart(entries, span = null) {
  const series = seriesOf(entries);
  const names = Object.keys(series);
  if (!names.length) return h('p', { class: 'muted', id: 'harvest-chart-empty' }, 'No numeric JSON fields to plot in this time range.');
  const times = names.flatMap((n) => series[n].map((p) => p[0]));
  let [t0, t1] = span || [Math.min(...times), Math.max(...times)];
  if (t1 - t0 < 10 * MINUTE) {
    // Entries seconds apart: a ten-minute axis around them keeps round, readable ticks.
    const pad = (10 * MINUTE - (t1 - t0)) / 2;
    [t0, t1] = [t0 - pad, t1 + pad];
  }
  // Drawn at the width it is shown at (up to 760 px), so 10-px ticks stay 10 px on a phone.
  const W = Math.round(Math.min(760, Math.max(300, window.innerWidth - 64)));
  const [left, right, top, panelH, gap, bottom] = [56, 16, 8, 96, 18, 34];
  const H = top + names.length * (panelH + gap) - gap + bottom;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': `Chart of ${names.join(', ')} over time`, id: 'harvest-chart' });
  const axisY = H - bottom;
  const xTicks = timeTicks(t0, t1, Math.max(3, Math.floor(W / 110)));
  xTicks.forEach((t, i) => {
    chart.append(
      svg('line', { x1: x(t), y1: top, x2: x(t), y2: axisY, class: 'grid' }),
      svg('text', { x: x(t), y: axisY + 14, class: 'tick x', 'text-anchor': 'middle' }, timeLabel(t, i ? xTicks[i - 1] : null, t1 - t0)));
  });
  chart.append(svg('line', { x1: left, y1: axisY, x2: W - right, y2: axisY, class: 'axis' }));
  names.forEach((name, i) => {
    const pts = series[name];
    const values = pts.map((p) => p[1]);
    let [v0, v1] = [Math.min(...values), Math.max(...values)];
    if (v0 === v1) { v0 -= 1; v1 += 1; }
    const ticks = valueTicks(v0, v1);
    [v0, v1] = [Math.min(v0, ticks[0]), Math.max(v1, ticks[ticks.length - 1])];
    const y0 = top + i * (panelH + gap);
    const y = (v) => y0 + (1 - (v - v0) / (v1 - v0)) * panelH;
    const axis = svg('g', { class: `y-axis series-axis-${i}`, 'data-series': name });
    axis.append(svg('line', { x1: left, y1: y0, x2: left, y2: y0 + panelH, class: 'axis' }),
      svg('text', { x: left + 6, y: y0 + 10, class: `series-name series-${i}` }, name));
    for (const v of ticks) {
      axis.append(svg('line', { x1: left, y1: y(v), x2: W - right, y2: y(v), class: 'grid' }),
        svg('text', { x: left - 6, y: y(v) + 3, class: 'tick end' }, formatNumber(v)));
    }
    chart.append(axis);
    const inRange = pts.filter(([t]) => t >= t0 && t <= t1);
    const d = inRange.map(([t, v], j) => `${j ? 'L' : 'M'}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    chart.append(svg('path', { d, class: `line series-${i}` }));
    for (const [t, v] of inRange) {
      chart.append(svg('circle', { cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 2.5, class: `dot series-${i}` },
        svg('title', {}, `${name} = ${v} at ${dateTime(t)}`)));
    }
  });
  const legend = h('ul', { class: 'legend' }, names.map((name, i) => h('li', {}, h('span', { class: `swatch series-${i}` }), name)));
  return h('figure', { class: 'chart-box' }, chart, h('figcaption', {}, legend));
}

function formatNumber(v) {
  return Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(1) : String(+v.toFixed(2));
}

export function renderDataTable(entries) {
  if (!entries.length) return h('p', { class: 'muted' }, 'No data yet. Devices post to http://harvest.soracom.io (100.127.111.111) when Harvest is on in their group.');
  return h('div', { class: 'table-wrap' }, h('table', { class: 'data', id: 'harvest-table' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Time'), h('th', { scope: 'col' }, 'Content type'), h('th', { scope: 'col' }, 'Content'))),
    h('tbody', {}, entries.map((e) => h('tr', {},
      h('td', { class: 'nowrap', 'data-label': 'Time' }, dateTime(e.time)),
      h('td', { 'data-label': 'Content type' }, e.contentType),
      h('td', { class: 'mono content', 'data-label': 'Content' }, typeof e.content === 'string' ? e.content : JSON.stringify(e.content)))))));
}
