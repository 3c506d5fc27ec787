/**
 * The layers of src/, lowest first; a module may import its own layer and the ones below, never above,
 * and no import circle is allowed. `npm test` checks it (test/architecture.test.ts: src/ holds to it, and an
 * upward import and a circle in a fixture are caught).
 */
const LAYERS = [
  ['foundation', '^src/(errors|paths)\\.ts$|^src/(model|data|optim)/'],
  ['engine', '^src/engine/'],
  ['config', '^src/config\\.ts$'],
  ['compute', '^src/cluster/[^/]+\\.ts$'],
  ['remote', '^src/cluster/remote/'],
  ['scheduler', '^src/cluster/(scheduler|replica_plan)\\.ts$'],
  ['report', '^src/report/'],
  ['train', '^src/train/'],
  ['dashboard', '^src/dashboard/'],
  ['entry', '^src/(index|cli|console|inference)\\.ts$|^src/launch/'],
];

// 'compute' matches the scheduler's modules too: they are excluded from it by name.
const pathOf = ([name, path]) => ({ path, ...(name === 'compute' ? { pathNot: LAYERS[5][1] } : {}) });

const upward = LAYERS.slice(0, -1).map((layer, i) => ({
  name: `${layer[0]}-imports-upward`,
  comment: `the ${layer[0]} layer must not import ${LAYERS.slice(i + 1).map(([n]) => n).join(', ')}`,
  severity: 'error',
  from: pathOf(layer),
  to: { path: LAYERS.slice(i + 1).map(([, p]) => `(${p})`).join('|') },
}));

module.exports = {
  forbidden: [
    { name: 'no-circular', comment: 'imports flow one way', severity: 'error', from: {}, to: { circular: true } },
    ...upward,
  ],
  options: {
    tsPreCompilationDeps: true,
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|node_modules)/' },
  },
};
