/**
 * What the cost model (src/cluster/cost_model.ts) predicts for many machines: each plan's step time for
 * 1–64 remote workers on links of 1, 10 and 100 Gbit/s, for the tutorial MLP and the 784→2048→2048→10 model,
 * the plan `--plan auto` would take, its speed-up over one machine, and the share of the step the
 * coordinator's own link is busy (at 100 % the star is saturated: more machines make the step longer).
 *
 * Every machine is assumed to compute at --gflops (default 100: what one core of this project's machine
 * runs the big model's GEMMs at), the coordinator's weight pass (server plan) at --coordinator-gflops (by
 * default as fast); a byte costs its link's time, full duplex not assumed (a member's bytes in and out are
 * added), and nothing overlaps — an upper bound, as on loopback the model was within 5–50 % of measured
 * steps (docs/plans.md, the cost model).
 *
 *   npm run plans -- [--gflops 100] [--coordinator-gflops 100] [--out DIR]   (Markdown on stdout, and DIR/plans.md)
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { coordinatorBytes, estimatePlans, stepSizes } from '../src/cluster/cost_model.js';
import { makeSpec, type ModelSpec } from '../src/model/spec.js';
import { scriptArgs, type ScriptArgs } from './args.js';

const MODELS: [string, ModelSpec, number][] = [
  ['tutorial MLP, batch 64', makeSpec(784, [512, 256, 128, 64], 10, 'sigmoid'), 64],
  ['784→2048→2048→10, batch 512', makeSpec(784, [2048, 2048], 10, 'sigmoid'), 512],
  ['784→2048→2048→10, batch 4096', makeSpec(784, [2048, 2048], 10, 'sigmoid'), 4096],
];
const MACHINES = [1, 2, 4, 8, 16, 32, 64];
const LINKS_GBIT = [1, 10, 100];

/** One row per model, link and machine count. */
export function predictions(gflops: number, coordinatorGflops = gflops): string[] {
  const rows: string[] = [];
  for (const [name, spec, batch] of MODELS) {
    const { rowFlops } = stepSizes(spec, batch);
    const rowsPerMs = (gflops * 1e6) / rowFlops;
    const coordinator = { rowsPerMs: (coordinatorGflops * 1e6) / rowFlops };
    const alone = estimatePlans(spec, batch, [{ rowsPerMs }], 0).find((e) => e.plan === 'replicated')!.ms;
    for (const gbit of LINKS_GBIT) {
      const msPerByte = 1000 / ((gbit * 1e9) / 8);
      for (const n of MACHINES.slice(1)) {
        const members = Array.from({ length: n }, () => ({ rowsPerMs }));
        const estimates = estimatePlans(spec, batch, members, msPerByte, { starMsPerByte: msPerByte, coordinator });
        const ms = Object.fromEntries(estimates.map((e) => [e.plan, e.ms]));
        const best = estimates[0];
        const star = (coordinatorBytes(spec, batch, n, best.plan) * msPerByte) / best.ms;
        rows.push(
          `| ${name} | ${gbit} Gbit/s | ${n} | ${ms.replicated.toFixed(2)} | ${ms.sharded.toFixed(2)} | ${ms.server.toFixed(2)} | ${best.plan} | ` +
            `${(alone / best.ms).toFixed(2)}× | ${Math.round(100 * star)} % |`,
        );
      }
    }
  }
  return rows;
}

function positive(args: ScriptArgs, name: string, fallback: string): number {
  const value = Number(args.value(name, fallback));
  if (!(value > 0)) throw new Error(`--${name} ${args.value(name, '')}: expected a positive number`);
  return value;
}

function main(): void {
  const args = scriptArgs({ gflops: 'value', 'coordinator-gflops': 'value', out: 'value' });
  const gflops = positive(args, 'gflops', '100');
  const coordinatorGflops = positive(args, 'coordinator-gflops', String(gflops));
  const table = [
    `Predicted by the cost model at ${gflops} GFLOP/s a machine, the coordinator's weight pass (server) at ${coordinatorGflops} (one machine alone: no wire).`,
    '',
    '| model | link | machines | replicated (ms/step) | sharded (ms/step) | server (ms/step) | auto takes | speed-up over 1 machine | coordinator link busy |',
    '|---|---|---|---|---|---|---|---|---|',
    ...predictions(gflops, coordinatorGflops),
    '',
  ].join('\n');
  console.log(table);
  const out = args.value('out', '');
  if (out) {
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, 'plans.md'), table);
  }
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*[/\\]/, '/'))) {
  try {
    main();
  } catch (e) {
    console.error(`plans: ${(e as Error).message}`);
    process.exitCode = 2;
  }
}
