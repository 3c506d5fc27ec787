/*
 * The dtrain dashboard page: a snapshot of the run when it opens, then what changed, over server-sent events
 * (GET /events); drawn with uPlot. Plain script, no build step. It only reads: nothing here can change the run.
 */
'use strict';

/** The run as the page holds it (the server's Snapshot, with step points appended as they come). */
let run = null;
let connection = 'connecting';
let drawQueued = false;
const charts = {};

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 1) => (x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(digits));
const fmtInt = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–');

function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '–';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** TensorBoard's smoothing: an exponential moving average, debiased so that the first points are not pulled to 0. */
function smooth(values, weight) {
  const out = new Array(values.length);
  let last = 0;
  let count = 0;
  for (let i = 0; i < values.length; i++) {
    const y = values[i];
    if (!Number.isFinite(y)) {
      out[i] = y;
      continue;
    }
    last = last * weight + (1 - weight) * y;
    count++;
    const debias = weight === 1 ? 1 : 1 - Math.pow(weight, count);
    out[i] = last / debias;
  }
  return out;
}

function chartWidth(el) {
  return Math.max(280, el.clientWidth - 4);
}

/** Makes a uPlot chart once, then only gives it new data. */
function plot(id, series, data, extra = {}) {
  const el = $(id);
  if (!charts[id]) {
    charts[id] = new uPlot(
      {
        width: chartWidth(el),
        height: 230,
        series: [{ label: extra.xLabel || 'step' }, ...series],
        axes: [{ label: extra.xLabel || 'step' }, { label: extra.yLabel || '', size: 60 }, ...(extra.axes || [])],
        scales: extra.scales || { x: { time: false } },
        legend: { live: true },
        cursor: { drag: { x: true, y: false } },
      },
      data,
      el,
    );
  } else {
    charts[id].setData(data);
  }
  el.dataset.points = String(data[0].length);
}

/** A per-step curve drawn faintly as it is, and over it smoothed by the slider's weight. */
function plotSmoothed(id, label, values, rgb, weight) {
  plot(
    id,
    [
      { label, stroke: `rgba(${rgb}, 0.25)`, width: 1 },
      { label: 'smoothed', stroke: `rgb(${rgb})`, width: 2 },
    ],
    [run.steps.step, values, smooth(values, weight)],
    { yLabel: label },
  );
}

function drawCharts() {
  const s = run.steps;
  const weight = Number($('smoothing').value);
  $('smoothing-value').textContent = weight.toFixed(2);
  plotSmoothed('loss-chart', 'loss', s.loss, '37, 99, 235', weight);
  const epochs = run.epochs;
  plot(
    'epoch-chart',
    [
      { label: 'test accuracy %', stroke: '#16a34a', width: 2, scale: 'acc', points: { show: true } },
      { label: 'test loss', stroke: '#ea580c', width: 2, points: { show: true } },
      { label: 'train loss', stroke: '#2563eb', width: 1, dash: [4, 4], points: { show: true } },
    ],
    [epochs.map((e) => e.epoch), epochs.map((e) => e.testAccuracy), epochs.map((e) => e.testAvgLoss), epochs.map((e) => e.trainLoss)],
    { xLabel: 'epoch', yLabel: 'loss', scales: { x: { time: false }, acc: { auto: true } }, axes: [{ scale: 'acc', side: 1, label: 'accuracy %', grid: { show: false } }] },
  );
  plotSmoothed('throughput-chart', 'samples/s', s.samplesPerSecond, '124, 58, 237', weight);
  const stats = run.stepStats;
  const flat = (v) => s.step.map(() => (v === undefined ? null : v));
  plot(
    'steptime-chart',
    [
      { label: 'step ms', stroke: '#0891b2', width: 1 },
      { label: 'median', stroke: '#334155', width: 1.5, dash: [6, 4], points: { show: false } },
      { label: 'p99', stroke: '#c2410c', width: 1.5, dash: [2, 4], points: { show: false } },
    ],
    [s.step, s.ms, flat(stats && stats.medianMs), flat(stats && stats.p99Ms)],
    { yLabel: 'ms' },
  );
}

function cell(row, text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function drawParticipants() {
  const body = $('participants').querySelector('tbody');
  body.textContent = '';
  const list = [...run.participants].sort((a, b) => (a.kind === b.kind ? a.id.localeCompare(b.id, 'en', { numeric: true }) : a.kind === 'local' ? -1 : 1));
  $('participants-empty').hidden = list.length > 0 || Object.keys(lastShares()).length > 0;
  for (const p of list) {
    const tr = document.createElement('tr');
    tr.dataset.id = p.id;
    const slowest = run.slowest === p.id;
    if (slowest) tr.classList.add('slowest');
    const name = cell(tr, p.id);
    if (slowest) {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.textContent = 'slowest';
      name.appendChild(badge);
    }
    cell(tr, p.address || (p.kind === 'local' ? 'this process' : '–'));
    cell(tr, [p.engine, p.device].filter(Boolean).join(' / ') || '–');
    cell(tr, p.state + (p.reason ? `: ${p.reason}` : ''), `state-${p.state}`);
    const share = document.createElement('div');
    share.className = 'share';
    share.innerHTML = '<span class="track"><span class="fill"></span></span><span class="pct"></span>';
    share.querySelector('.fill').style.width = `${(100 * p.share).toFixed(1)}%`;
    share.querySelector('.pct').textContent = `${(100 * p.share).toFixed(1)} %`;
    share.dataset.share = String(p.share);
    cell(tr, '').appendChild(share);
    cell(tr, fmtInt(p.rowsPerSecond), 'num');
    cell(tr, fmt(p.computeMs, 2), 'num');
    cell(tr, fmt(p.applyMs, 2), 'num');
    cell(tr, fmt(p.wireMs, 2), 'num');
    cell(tr, fmt(p.waitMs, 2), 'num');
    cell(tr, '').appendChild(timeSplit(p));
    body.appendChild(tr);
  }
  // Without participant records (a run from before them), the last epoch's shares still say who computed what.
  if (list.length === 0) {
    const shares = lastShares();
    const total = Object.values(shares).reduce((a, b) => a + b, 0);
    for (const [id, rows] of Object.entries(shares)) {
      const tr = document.createElement('tr');
      tr.dataset.id = id;
      cell(tr, id);
      for (let i = 0; i < 3; i++) cell(tr, '–');
      cell(tr, `${((100 * rows) / total).toFixed(1)} % (last epoch)`);
      for (let i = 0; i < 5; i++) cell(tr, '–', 'num');
      cell(tr, '');
      body.appendChild(tr);
    }
  }
}

/** One bar: compute, apply, wire and wait, each its part of the participant's step. */
function timeSplit(p) {
  const parts = [['compute', p.computeMs], ['apply', p.applyMs], ['wire', p.wireMs], ['wait', p.waitMs]];
  const total = parts.reduce((a, [, ms]) => a + ms, 0);
  const bar = document.createElement('div');
  bar.className = 'split';
  for (const [name, ms] of parts) {
    const segment = document.createElement('span');
    segment.className = `k-${name}`;
    segment.style.width = `${total > 0 ? (100 * ms) / total : 0}%`;
    segment.title = `${name} ${fmt(ms, 2)} ms`;
    bar.appendChild(segment);
  }
  return bar;
}

function lastShares() {
  const last = run.epochs[run.epochs.length - 1];
  return (last && last.shares) || {};
}

function drawPlans() {
  const body = $('plans').querySelector('tbody');
  body.textContent = '';
  $('plans-empty').hidden = run.plans.length > 0;
  run.plans.forEach((p, i) => {
    const tr = document.createElement('tr');
    cell(tr, String(p.step), 'num');
    cell(tr, p.plan + (p.rowsOnOne ? ' (every row on the fastest worker)' : '') + (i === run.plans.length - 1 ? ' ◀ in force' : ''));
    cell(tr, p.reason);
    cell(tr, p.estimates.map((e) => `${e.plan} ${fmt(e.ms, 1)}`).join(', ') || '–');
    cell(tr, fmt(p.measuredMs, 1), 'num');
    body.appendChild(tr);
  });
  const now = run.plans[run.plans.length - 1];
  $('plan-now').textContent = now ? `in force: ${now.plan}` : '';
}

function definitions(dl, pairs) {
  dl.textContent = '';
  for (const [key, value, className] of pairs) {
    const dt = document.createElement('dt');
    dt.textContent = key;
    const dd = document.createElement('dd');
    dd.textContent = value;
    if (className) dd.className = className;
    dl.append(dt, dd);
  }
}

function drawIdentity() {
  const id = run.identity;
  if (!id) return;
  $('model').textContent = `${id.model}, ${fmtInt(id.parameters)} parameters`;
  const devices = [...new Set(run.participants.map((p) => [p.engine, p.device].filter(Boolean).join('/')).filter(Boolean))];
  const pairs = [
    ['model', `${id.model}, ${fmtInt(id.parameters)} parameters`],
    ['data', `${id.dataset}: ${fmtInt(id.trainSamples)} train / ${fmtInt(id.testSamples)} test samples`],
    ['data sha256', id.datasetSha256, 'hash'],
    ['workers at start', id.workers],
    ['engine / device', devices.length > 0 ? devices.join(', ') : `${id.config.engine}/${id.config.device}`],
    ['plan asked', String(id.config.plan)],
    ['run folder', id.outDir],
  ];
  if (id.listening) pairs.push(['listening', id.listening]);
  if (run.done) {
    pairs.push(['paramsSha256', run.done.paramsSha256, 'hash']);
    pairs.push(['steps', `${fmtInt(run.done.steps)} (${fmt(run.done.msPerStep, 2)} ms a step, ${fmtInt(run.done.samplesPerSecond)} samples/s)`]);
    if (run.done.error) pairs.push(['error', run.done.error]);
  }
  definitions($('identity'), pairs);
  definitions(
    $('config'),
    Object.entries(id.config).map(([k, v]) => [k, Array.isArray(v) ? v.join(',') : String(v)]),
  );
}

function drawProgress() {
  const p = run.progress;
  const total = p.totalSteps;
  const fraction = run.finished || run.done ? 1 : total > 0 ? Math.min(1, p.step / total) : 0;
  $('progress-fill').style.width = `${(100 * fraction).toFixed(1)}%`;
  const epochs = run.identity && typeof run.identity.config.epochs === 'number' ? ` of ${run.identity.config.epochs}` : '';
  const eta = run.finished || run.done ? 'done' : `ETA ${duration(p.etaSeconds)}`;
  $('progress-text').textContent = `step ${fmtInt(p.step)}${total > 0 ? ` / ${fmtInt(total)}` : ''} · epoch ${p.epoch}${epochs} · ${eta}`;
  $('progress-text').dataset.step = String(p.step);
  const stats = run.stepStats;
  $('steptime-text').textContent = stats ? `median ${fmt(stats.medianMs, 2)} ms · p90 ${fmt(stats.p90Ms, 2)} · p99 ${fmt(stats.p99Ms, 2)} (last ${stats.steps} steps)` : '';
  $('throughput-text').textContent = stats ? `${fmtInt(stats.samplesPerSecond)} samples/s` : '';
  const last = run.epochs[run.epochs.length - 1];
  $('epoch-text').textContent = last ? `epoch ${last.epoch}: accuracy ${fmt(last.testAccuracy, 2)} %, test loss ${fmt(last.testAvgLoss, 4)}` : 'No epoch finished yet.';
}

function drawEvents() {
  const ol = $('events');
  ol.textContent = '';
  for (const e of [...run.events].reverse()) {
    const li = document.createElement('li');
    const step = document.createElement('span');
    step.className = 'step';
    step.textContent = `step ${e.step}`;
    li.append(step, document.createTextNode(e.line));
    ol.appendChild(li);
  }
  if (run.events.length === 0) ol.innerHTML = '<li class="muted">none</li>';
}

function drawStatus() {
  const el = $('status');
  const ended = run && (run.finished || run.done || connection === 'closed');
  const [text, cls] = ended ? [run.finished ? 'finished run' : 'run ended', 'ended'] : connection === 'live' ? ['live', 'live'] : connection === 'lost' ? ['connection lost, retrying', 'lost'] : ['connecting…', ''];
  el.textContent = text;
  el.className = `pill ${cls}`;
}

function draw() {
  drawQueued = false;
  drawStatus();
  if (!run) return;
  drawProgress();
  drawIdentity();
  drawParticipants();
  drawPlans();
  drawEvents();
  drawCharts();
}

function queueDraw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(draw);
}

function applyUpdate(update) {
  for (const [key, value] of Object.entries(update)) {
    // measuredMs: the plan in force's, measured over more steps (the plans are sent whole only when they change).
    if (key === 'measuredMs') {
      const inForce = run.plans[run.plans.length - 1];
      if (inForce) inForce.measuredMs = value;
    } else if (key !== 'steps') run[key] = value;
  }
  // A page that opened between two updates has some of the next one's points in its snapshot already.
  const fresh = update.steps;
  if (!fresh) return;
  const last = run.steps.step.length > 0 ? run.steps.step[run.steps.step.length - 1] : -Infinity;
  const from = fresh.step.findIndex((step) => step > last);
  if (from < 0) return;
  for (const column of Object.keys(run.steps)) run.steps[column].push(...fresh[column].slice(from));
}

function connect() {
  const events = new EventSource('events');
  events.addEventListener('open', () => {
    connection = 'live';
    queueDraw();
  });
  events.addEventListener('snapshot', (e) => {
    run = JSON.parse(e.data);
    connection = 'live';
    queueDraw();
  });
  events.addEventListener('update', (e) => {
    if (!run) return;
    applyUpdate(JSON.parse(e.data));
    queueDraw();
  });
  // The run ended: the server closes; the page keeps what it shows.
  events.addEventListener('closed', () => {
    events.close();
    connection = 'closed';
    queueDraw();
  });
  events.addEventListener('error', () => {
    if (events.readyState === EventSource.CLOSED || connection === 'closed') return;
    connection = 'lost';
    queueDraw();
  });
}

window.addEventListener('resize', () => {
  for (const [id, chart] of Object.entries(charts)) chart.setSize({ width: chartWidth($(id)), height: 230 });
});
$('smoothing').addEventListener('input', () => run && drawCharts());
connect();
