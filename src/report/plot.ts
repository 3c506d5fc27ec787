/**
 * The run's plot as a self-contained SVG: loss (training and test) and test accuracy per epoch, one point
 * per epoch. Written at the end of a run and by `dtrain plot RUN_DIR`.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readMetrics, type EpochRecord } from './metrics.js';

interface Series {
  name: string;
  color: string;
  points: [number, number][];
}

const WIDTH = 420;
const HEIGHT = 280;
const MARGIN = { left: 56, right: 16, top: 32, bottom: 40 };

function niceTicks(min: number, max: number, count = 5): number[] {
  if (min === max) return [min];
  const step0 = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= step0) ?? step0;
  const ticks: number[] = [];
  for (let t = Math.ceil(min / step) * step; t <= max + 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');

/** One chart panel at (x0, 0). */
export function panel(title: string, xLabel: string, series: Series[], x0: number): string {
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const [xMin, xMax] = [Math.min(...xs), Math.max(...xs)];
  let [yMin, yMax] = [Math.min(...ys), Math.max(...ys)];
  if (yMin === yMax) [yMin, yMax] = [yMin - 1, yMax + 1];
  const pad = (yMax - yMin) * 0.08;
  yMin -= pad;
  yMax += pad;
  const w = WIDTH - MARGIN.left - MARGIN.right;
  const h = HEIGHT - MARGIN.top - MARGIN.bottom;
  const sx = (x: number) => x0 + MARGIN.left + (xMax === xMin ? w / 2 : ((x - xMin) / (xMax - xMin)) * w);
  const sy = (y: number) => MARGIN.top + h - ((y - yMin) / (yMax - yMin)) * h;
  const parts: string[] = [];
  parts.push(`<text x="${x0 + WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">${esc(title)}</text>`);
  parts.push(`<rect x="${x0 + MARGIN.left}" y="${MARGIN.top}" width="${w}" height="${h}" fill="none" stroke="#888"/>`);
  for (const t of niceTicks(yMin, yMax)) {
    parts.push(`<line x1="${x0 + MARGIN.left}" x2="${x0 + MARGIN.left + w}" y1="${sy(t).toFixed(1)}" y2="${sy(t).toFixed(1)}" stroke="#eee"/>`);
    parts.push(`<text x="${x0 + MARGIN.left - 6}" y="${(sy(t) + 4).toFixed(1)}" text-anchor="end">${t}</text>`);
  }
  for (const t of niceTicks(xMin, xMax, Math.min(8, Math.max(1, xMax - xMin)))) {
    if (!Number.isInteger(t)) continue;
    parts.push(`<text x="${sx(t).toFixed(1)}" y="${MARGIN.top + h + 16}" text-anchor="middle">${t}</text>`);
  }
  parts.push(`<text x="${x0 + MARGIN.left + w / 2}" y="${HEIGHT - 6}" text-anchor="middle">${esc(xLabel)}</text>`);
  series.forEach((s, i) => {
    const path = s.points.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
    parts.push(`<polyline class="series" data-name="${esc(s.name)}" fill="none" stroke="${s.color}" stroke-width="2" points="${path}"/>`);
    for (const [x, y] of s.points) {
      parts.push(`<circle class="point" data-series="${esc(s.name)}" cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${s.color}"><title>${esc(s.name)}: ${y}</title></circle>`);
    }
    parts.push(`<rect x="${x0 + MARGIN.left + 8}" y="${MARGIN.top + 8 + i * 16}" width="10" height="10" fill="${s.color}"/>`);
    parts.push(`<text x="${x0 + MARGIN.left + 22}" y="${MARGIN.top + 17 + i * 16}">${esc(s.name)}</text>`);
  });
  return parts.join('\n');
}

export function svgDocument(panels: string[], title: string): string {
  const width = WIDTH * panels.length;
  return [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${HEIGHT}" viewBox="0 0 ${width} ${HEIGHT}" font-family="sans-serif" font-size="11">`,
    `<title>${esc(title)}</title>`,
    `<rect width="${width}" height="${HEIGHT}" fill="white"/>`,
    ...panels,
    `</svg>`,
    '',
  ].join('\n');
}

export function trainingPlot(epochs: Pick<EpochRecord, 'epoch' | 'trainLoss' | 'testAvgLoss' | 'testAccuracy'>[]): string {
  return svgDocument(
    [
      panel('Loss', 'epoch', [
        { name: 'training loss', color: '#1f77b4', points: epochs.map((e) => [e.epoch, e.trainLoss]) },
        { name: 'test loss', color: '#ff7f0e', points: epochs.map((e) => [e.epoch, e.testAvgLoss]) },
      ], 0),
      panel('Test accuracy (%)', 'epoch', [{ name: 'test accuracy', color: '#2ca02c', points: epochs.map((e) => [e.epoch, e.testAccuracy]) }], WIDTH),
    ],
    'dtrain: loss and accuracy per epoch',
  );
}

/** `dtrain plot RUN_DIR`: writes RUN_DIR/plot.svg from its metrics.jsonl; returns the file. */
export function plotRun(runDir: string): string {
  const epochs = readMetrics(runDir).filter((r): r is EpochRecord => r.type === 'epoch');
  if (epochs.length === 0) throw new Error(`${runDir}/metrics.jsonl has no epoch records to plot`);
  const file = join(runDir, 'plot.svg');
  writeFileSync(file, trainingPlot(epochs));
  return file;
}
