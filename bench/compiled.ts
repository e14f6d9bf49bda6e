/**
 * The bench runs what users run: the backends (bench/backend.ts, bench/floor.ts, and through them
 * lib/, server/ and the reference app) compiled by tsc, as the npm package ships them
 * (`npm run build`), and started with plain node. Under tsx, esbuild's keepNames wraps every
 * closure in a `__name()` call (an Object.defineProperty per closure created) that no user pays:
 * a few % of a forwarding instance's samples under perf, within the scatter of alternated
 * `--cost` runs, but compiled instances also run faster and route differently under bursts
 * (README, Performance), so the bench measures the code users run.
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';

const REPO = path.resolve(__dirname, '..');
/** Where tsc writes them (bench/tsconfig.backend.json's outDir); the repo's layout is kept below it. */
export const COMPILED_DIR = path.join(REPO, 'node_modules', '.cache', 'ddp-cluster-bench');
let built = false;

/** `bench/<name>.ts` compiled (once per bench run) → the .js file to fork. */
export function compiled(name: 'backend' | 'floor'): string {
  if (!built) {
    execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', path.join(REPO, 'bench', 'tsconfig.backend.json')], { cwd: REPO, stdio: 'inherit' });
    built = true;
  }
  return path.join(COMPILED_DIR, 'bench', `${name}.js`);
}
