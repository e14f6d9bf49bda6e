/**
 * Real Meteor for tests: the `meteor` tool, apps built from examples/ with `meteor build
 * --server-only`, and their bundles started with `node main.js` (what Galaxy, mup and Docker run).
 *
 * The tool comes from, in order:
 *  1. METEOR_BIN — a `meteor` launcher (a user's own install, any 3.x; the source build too, with
 *     METEOR_OFFLINE_CATALOG=1 as .ci/run sets it);
 *  2. `meteor` on PATH;
 *  3. ../shared/meteor/build.sh next to the checkout (Meteor 3.0.4 built from source, offline,
 *     ~3 min the first time and a no-op after), which .ci/run also runs;
 *  otherwise the suite fails and says how to provide one. It never skips.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter, once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { freePort } from '../../examples/node-ddp-app/mongo';
import { waitForEvent } from './wait';

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
const BUILD_SCRIPT = path.resolve(REPO_ROOT, '..', 'shared', 'meteor', 'build.sh');
/** Apps are built here; `.meteor/local` survives between runs, so a second run rebuilds faster. */
const WORK = path.join(os.tmpdir(), 'ddp-cluster-meteor-apps');

export interface MeteorTool {
  readonly bin: string;
  /** How it was found, for the report. */
  readonly source: string;
  readonly env: NodeJS.ProcessEnv;
}

function executable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

function onPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir && executable(path.join(dir, name))) return path.join(dir, name);
  }
  return null;
}

let tool: Promise<MeteorTool> | null = null;

/** The meteor tool (see the file comment), found or built once per test run. */
export function meteorTool(): Promise<MeteorTool> {
  tool ??= findMeteor();
  return tool;
}

async function findMeteor(): Promise<MeteorTool> {
  // Root may run meteor only with this. METEOR_OFFLINE_CATALOG passes through from the caller's
  // environment (.ci/run sets it for the source build, which has no package catalog to refresh).
  const env = { ...process.env, METEOR_ALLOW_SUPERUSER: '1' };
  const given = process.env.METEOR_BIN;
  if (given) {
    if (!executable(given)) throw new Error(`METEOR_BIN=${given} is not an executable file: point it at a meteor launcher, or unset it`);
    return { bin: given, source: 'METEOR_BIN', env };
  }
  const found = onPath('meteor');
  if (found) return { bin: found, source: 'PATH', env };
  if (fs.existsSync(BUILD_SCRIPT)) {
    process.stderr.write(`[meteor] Meteor 3.0.4 from ${BUILD_SCRIPT} (built from source the first time, ~3 min; a no-op after)...\n`);
    const out = await run('bash', [BUILD_SCRIPT], { cwd: REPO_ROOT, timeoutMs: 15 * 60_000, what: 'the Meteor build (../shared/meteor/build.sh)' });
    const bin = out.trim().split('\n').pop() ?? '';
    if (!executable(bin)) throw new Error(`../shared/meteor/build.sh printed ${JSON.stringify(bin)}, which is not an executable meteor launcher`);
    return { bin, source: 'built by ../shared/meteor/build.sh', env: { ...env, METEOR_OFFLINE_CATALOG: '1' } };
  }
  throw new Error([
    'The real-Meteor suite needs a meteor tool, and none was found. Provide one of:',
    '  - METEOR_BIN=/path/to/meteor (any Meteor 3.x launcher), or',
    '  - `meteor` on PATH (https://docs.meteor.com/about/install.html), or',
    `  - ${BUILD_SCRIPT} (builds Meteor 3.0.4 from source offline; .ci/run runs it).`,
  ].join('\n'));
}

interface RunOptions {
  readonly cwd: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly timeoutMs: number;
  readonly what: string;
}

/** Runs a command to completion; resolves with stdout, rejects with the tail of its output. */
export function run(command: string, args: readonly string[], o: RunOptions): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: o.cwd, env: o.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = '';
    let all = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); all += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { all += d.toString(); });
    const timer = setTimeout(() => killGroup(child, 'SIGKILL'), o.timeoutMs);
    child.once('error', reject);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`${o.what} failed (${signal ?? `exit code ${String(code)}`}${signal === 'SIGKILL' ? `, over ${o.timeoutMs} ms` : ''}):\n${all.slice(-4000)}`));
    });
  });
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    child.kill(signal);
  }
}

/** `npm pack` of this checkout (its `prepare` compiles dist/): what `npm install ddp-cluster` gets. */
export async function packTarball(): Promise<string> {
  const dest = fs.mkdtempSync(path.join(os.tmpdir(), 'ddp-cluster-pack-'));
  const out = await run('npm', ['pack', '--silent', '--pack-destination', dest], { cwd: REPO_ROOT, timeoutMs: 5 * 60_000, what: 'npm pack' });
  const file = out.trim().split('\n').pop() ?? '';
  return path.join(dest, file);
}

/**
 * A METEOR_PACKAGE_DIRS directory holding a link to this checkout, as README's "From a checkout"
 * says (Meteor looks for packages in the subdirectories of each listed directory).
 */
export function linkedPackageDirs(): string {
  const dir = path.join(WORK, 'packages');
  fs.mkdirSync(dir, { recursive: true });
  const link = path.join(dir, 'ddp-cluster');
  fs.rmSync(link, { force: true });
  fs.symlinkSync(REPO_ROOT, link);
  return dir;
}

/** Copies examples/<name> to the work dir, keeping the `.meteor/local` and node_modules of the last run. */
function syncApp(name: string): string {
  const src = path.join(REPO_ROOT, 'examples', name);
  const dir = path.join(WORK, name);
  fs.mkdirSync(dir, { recursive: true });
  for (const entry of fs.readdirSync(dir)) {
    if (entry !== '.meteor' && entry !== 'node_modules') fs.rmSync(path.join(dir, entry), { recursive: true, force: true });
  }
  fs.mkdirSync(path.join(dir, '.meteor'), { recursive: true });
  for (const entry of fs.readdirSync(path.join(dir, '.meteor'))) {
    if (entry !== 'local') fs.rmSync(path.join(dir, '.meteor', entry), { recursive: true, force: true });
  }
  const skipped = (rel: string): boolean => ['node_modules', path.join('.meteor', 'local')].some((d) => rel === d || rel.startsWith(d + path.sep));
  fs.cpSync(src, dir, { recursive: true, filter: (s) => !skipped(path.relative(src, s)) });
  return dir;
}

export interface BuildOptions {
  /** METEOR_PACKAGE_DIRS for the Atmosphere path. */
  readonly packageDirs?: string;
  /** An npm tarball of ddp-cluster to install into the app's dependencies (the npm path; Meteor bundles only those). */
  readonly tarball?: string;
}

export interface BuiltApp {
  readonly name: string;
  /** The `bundle/` directory: start it with `node main.js`. */
  readonly bundle: string;
  /** Where the app's sources were built (for `meteor run`). */
  readonly appDir: string;
  readonly buildMs: number;
}

/** `meteor build --server-only` of examples/<name>, then `npm install` in the bundle, as Meteor's docs say. */
export async function buildApp(name: string, o: BuildOptions = {}): Promise<BuiltApp> {
  const t0 = Date.now();
  const meteor = await meteorTool();
  const appDir = syncApp(name);
  const npm = (args: string[], cwd: string, what: string): Promise<string> =>
    run('npm', ['--no-audit', '--no-fund', '--loglevel=error', ...args], { cwd, timeoutMs: 5 * 60_000, what });
  await npm(['install'], appDir, `npm install in ${name}`);
  if (o.tarball) await npm(['install', o.tarball], appDir, `npm install of the ddp-cluster tarball in ${name}`);
  const out = path.join(WORK, `${name}-build`);
  fs.rmSync(out, { recursive: true, force: true });
  const env = { ...meteor.env, ...(o.packageDirs && { METEOR_PACKAGE_DIRS: o.packageDirs }) };
  await run(meteor.bin, ['build', '--directory', out, '--server-only'], { cwd: appDir, env, timeoutMs: 15 * 60_000, what: `meteor build of examples/${name}` });
  const bundle = path.join(out, 'bundle');
  await npm(['install'], path.join(bundle, 'programs', 'server'), `npm install in ${name}'s bundle`);
  return { name, bundle, appDir, buildMs: Date.now() - t0 };
}

export interface LogLine { readonly at: number; readonly line: string }

/** One running process of a Meteor app (a bundle's `node main.js`, or `meteor run`), with its output. */
export class MeteorProcess extends EventEmitter {
  readonly logs: LogLine[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(readonly id: string, readonly url: string, readonly proc: ChildProcess) {
    super();
    const keep = (line: string): void => {
      if (this.logs.length < 20_000) this.logs.push({ at: Date.now(), line });
      this.emit('line', line);
    };
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on('line', keep);
    createInterface({ input: proc.stderr as NodeJS.ReadableStream }).on('line', keep);
    this.exited = once(proc, 'exit').then(([code, signal]) => ({ code: code as number | null, signal: signal as NodeJS.Signals | null }));
    void this.exited.then(() => this.emit('line', ''));
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Resolves with the first output line matching `re` (also looking at what was printed before). */
  waitForLine(re: RegExp, what: string, timeoutMs = 60_000): Promise<string> {
    return waitForEvent(this, 'line', () => {
      const hit = this.logs.find((l) => re.test(l.line));
      if (hit) return hit.line;
      if (!this.alive) throw new Error(`${this.id} exited while waiting for ${what}:\n${this.tail()}`);
      return undefined;
    }, `${this.id}: ${what}`, timeoutMs).catch((err: Error) => {
      throw new Error(`${err.message}; its last output:\n${this.tail()}`);
    });
  }

  tail(n = 15): string {
    return this.logs.slice(-n).map((l) => l.line).join('\n');
  }

  /** Sends `signal` to the process group (meteor run has children) and resolves when it exited. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.alive) return;
    killGroup(this.proc, signal);
    await this.exited;
  }
}

/** `node main.js` in a bundle, with the given environment; resolves once it answers /cluster/health. */
export async function startBundle(app: BuiltApp, id: string, port: number, env: Record<string, string>): Promise<MeteorProcess> {
  const url = `http://127.0.0.1:${port}`;
  const proc = spawn(process.execPath, ['main.js'], {
    cwd: app.bundle, detached: true, stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...cleanEnv(), PORT: String(port), ROOT_URL: url, CLUSTER_INSTANCE_ID: id, ...env },
  });
  const p = new MeteorProcess(id, url, proc);
  started.add(p);
  await p.waitForLine(/"event":"cluster\.attached"|cluster: not clustered/, 'the cluster to attach');
  await waitListening(p, url);
  return p;
}

/**
 * startBundle on a free port. A port free when probed can become an outgoing connection's
 * ephemeral port before Meteor binds 0.0.0.0 to it (seen in bench runs with many connections
 * open): on EADDRINUSE another port is tried, 3 in all.
 */
export async function startBundleOnFreePort(app: BuiltApp, id: string, env: (port: number) => Record<string, string>): Promise<MeteorProcess> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    try {
      return await startBundle(app, id, port, env(port));
    } catch (err) {
      if (attempt >= 3 || !String((err as Error).message).includes('EADDRINUSE')) throw err;
    }
  }
}

/** `meteor run --port <port>` in the app's source dir (dev mode); resolves once it serves HTTP. */
export async function meteorRun(app: BuiltApp, port: number, env: Record<string, string>, packageDirs?: string): Promise<MeteorProcess> {
  const meteor = await meteorTool();
  const url = `http://127.0.0.1:${port}`;
  const proc = spawn(meteor.bin, ['run', '--port', `127.0.0.1:${port}`], {
    cwd: app.appDir, detached: true, stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...cleanEnv(), ...meteor.env, ROOT_URL: url, ...(packageDirs && { METEOR_PACKAGE_DIRS: packageDirs }), ...env },
  });
  const p = new MeteorProcess('meteor-run', url, proc);
  started.add(p);
  await p.waitForLine(/App running at/, '"App running at"', 10 * 60_000);
  await waitListening(p, url);
  return p;
}

async function waitListening(p: MeteorProcess, url: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (!p.alive) throw new Error(`${p.id} exited before it served ${url}:\n${p.tail()}`);
    const ok = await fetch(url, { signal: AbortSignal.timeout(2000) }).then((r) => r.status < 500, () => false);
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${p.id} did not serve ${url} within 60 s:\n${p.tail()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The test runner's environment without the variables that would configure the apps by accident. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const k of Object.keys(env)) {
    if (/^(CLUSTER_|METEOR_|MONGO_|ROOT_URL$|PORT$|HTTP_FORWARDED_COUNT$|DISABLE_WEBSOCKETS$|NODE_OPTIONS$)/.test(k)) delete env[k];
  }
  return env;
}

const started = new Set<MeteorProcess>();

/** Kills every process this module started (suite teardown). */
export async function killAll(): Promise<void> {
  await Promise.all([...started].map((p) => p.kill('SIGKILL')));
  started.clear();
}
