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

export function renderChart(entries) {
  const series = seriesOf(entries);
  const names = Object.keys(series);
  if (!names.length) return h('p', { class: 'muted', id: 'harvest-chart-empty' }, 'No numeric JSON fields to plot.');
  const points = names.flatMap((n) => series[n]);
  const times = points.map((p) => p[0]);
  const values = points.map((p) => p[1]);
  let [t0, t1] = [Math.min(...times), Math.max(...times)];
  let [v0, v1] = [Math.min(...values), Math.max(...values)];
  if (t0 === t1) { t0 -= 1000; t1 += 1000; }
  if (v0 === v1) { v0 -= 1; v1 += 1; }
  const [W, H, left, right, top, bottom] = [640, 240, 56, 12, 12, 28];
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
  const y = (v) => top + (1 - (v - v0) / (v1 - v0)) * (H - top - bottom);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': `Chart of ${names.join(', ')} over time`, id: 'harvest-chart' });
  chart.append(
    svg('line', { x1: left, y1: H - bottom, x2: W - right, y2: H - bottom, class: 'axis' }),
    svg('line', { x1: left, y1: top, x2: left, y2: H - bottom, class: 'axis' }),
    svg('text', { x: left - 4, y: top + 10, class: 'tick end' }, formatNumber(v1)),
    svg('text', { x: left - 4, y: H - bottom, class: 'tick end' }, formatNumber(v0)),
    svg('text', { x: left, y: H - 8, class: 'tick' }, new Date(t0).toLocaleTimeString()),
    svg('text', { x: W - right, y: H - 8, class: 'tick end' }, new Date(t1).toLocaleTimeString()));
  names.forEach((name, i) => {
    const pts = series[name];
    const d = pts.map(([t, v], j) => `${j ? 'L' : 'M'}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    chart.append(svg('path', { d, class: `line series-${i}` }));
    for (const [t, v] of pts) {
      chart.append(svg('circle', { cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 2.5, class: `dot series-${i}` },
        svg('title', {}, `${name} = ${v} at ${dateTime(t)}`)));
    }
  });
  const legend = h('ul', { class: 'legend' }, names.map((name, i) => h('li', {}, h('span', { class: `swatch series-${i}` }), name)));
  return h('figure', { class: 'chart-box' }, chart, h('figcaption', {}, legend));
}

function formatNumber(v) {
  return Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(2) : String(+v.toFixed(2));
}

export function renderDataTable(entries) {
  if (!entries.length) return h('p', { class: 'muted' }, 'No data yet. Devices post to http://harvest.soracom.io (100.127.111.111) when Harvest is on in their group.');
  return h('div', { class: 'table-wrap' }, h('table', { class: 'data', id: 'harvest-table' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Time'), h('th', { scope: 'col' }, 'Content type'), h('th', { scope: 'col' }, 'Content'))),
    h('tbody', {}, entries.map((e) => h('tr', {},
      h('td', { class: 'nowrap' }, dateTime(e.time)),
      h('td', {}, e.contentType),
      h('td', { class: 'mono content' }, typeof e.content === 'string' ? e.content : JSON.stringify(e.content)))))));
}
