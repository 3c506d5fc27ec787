// Makes the built CLI executable: npm links a package's bin only for dependencies, and `npx dtrain` in this
// project runs dist/src/cli.js itself, which tsc writes without the executable bit ("dtrain: Permission
// denied" on a fresh clone).
import { chmodSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

chmodSync(join(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'src', 'cli.js'), 0o755);
