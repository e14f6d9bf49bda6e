/**
 * A local MongoDB-wire server for the reference app, the demo, the bench and the tests.
 *
 * Sources, first that works wins:
 *   1. $CLUSTER_TEST_MONGO_URL (used as is, not controllable);
 *   2. `mongod` on PATH (temp dbpath, free loopback port);
 *   3. FerretDB (SQLite backend) from PATH / $(go env GOPATH)/bin / ~/go/bin, built with
 *      `.ci/install-ferretdb.sh` when missing.
 * Otherwise startMongo() throws an error saying how to provide one. It never skips silently.
 *
 * Spawned servers can be stopped and started again on the same port and data dir (tests use this to
 * simulate an outage). They are killed on stop(), at disposeAll(), and on process exit/SIGINT/SIGTERM.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { MongoClient } from 'mongodb';

export interface MongoServer {
  url: string;
  kind: 'env' | 'mongod' | 'ferretdb';
  /** Whether stop()/start()/restart() are supported (false for kind 'env'). */
  controllable: boolean;
  /** Stops the server process; data dir and port are kept for start(). */
  stop(): Promise<void>;
  /** Starts the server again on the same port and data dir; resolves when it answers ping. */
  start(): Promise<void>;
  restart(): Promise<void>;
}

const REPO_ROOT = path.resolve(__dirname, '..', '..');
const READY_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 10_000;
const INSTALL_TIMEOUT_MS = 10 * 60_000;

// ---------------------------------------------------------------------------------------------
// Helpers

/** A database URL derived from baseUrl with a unique database name `test_<name>_<random>`. */
export function uniqueDbUrl(baseUrl: string, name: string): string {
  const m = /^(mongodb(?:\+srv)?:\/\/[^/?]*)(?:\/([^?]*))?(\?.*)?$/.exec(baseUrl);
  if (!m || !m[1]) throw new Error(`Not a mongodb:// URL: ${baseUrl}`);
  const [, prefix, oldDb = '', query = ''] = m;
  const safe = name.replace(/[^A-Za-z0-9_]/g, '_').slice(0, 40);
  const db = `test_${safe}_${randomBytes(4).toString('hex')}`;
  let qs = query;
  // The path database is the default authSource for credentials; keep authenticating against it.
  if (oldDb && prefix.includes('@') && !/[?&]authSource=/.test(query)) {
    qs = `${query.length > 1 ? `${query}&` : '?'}authSource=${oldDb}`;
  }
  return `${prefix}/${db}${qs}`;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error('could not get a free port'))));
    });
  });
}

function findExecutable(name: string, extraDirs: string[] = []): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter), ...extraDirs].filter(Boolean);
  for (const dir of dirs) {
    const file = path.join(dir, name);
    try {
      fs.accessSync(file, fs.constants.X_OK);
      if (fs.statSync(file).isFile()) return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

function goBinDirs(): string[] {
  const dirs: string[] = [];
  try {
    const gopath = execFileSync('go', ['env', 'GOPATH'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    for (const p of gopath.split(path.delimiter)) if (p) dirs.push(path.join(p, 'bin'));
  } catch {
    // go not installed
  }
  dirs.push(path.join(os.homedir(), 'go', 'bin'));
  return dirs;
}

/** Resolves when `url` answers ping; rejects if `exited` settles first or after the timeout. */
async function waitForPing(url: string, exited: Promise<string>, timeoutMs = READY_TIMEOUT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let died: string | undefined;
  void exited.then((why) => (died = why));
  let lastError: unknown;
  while (Date.now() < deadline) {
    if (died !== undefined) throw new Error(died);
    const client = new MongoClient(url, { serverSelectionTimeoutMS: 250, connectTimeoutMS: 1000 });
    try {
      await client.connect();
      await client.db('admin').command({ ping: 1 });
      return;
    } catch (err) {
      lastError = err;
    } finally {
      await client.close().catch(() => undefined);
    }
    // short retry pause, cut short if the process dies meanwhile
    await Promise.race([new Promise((r) => setTimeout(r, 50)), exited]);
  }
  if (died !== undefined) throw new Error(died);
  throw new Error(`MongoDB at ${url} not ready after ${timeoutMs} ms: ${String(lastError)}`);
}

// ---------------------------------------------------------------------------------------------
// Process cleanup: nothing is left behind, even on failure

const liveChildren = new Set<ChildProcess>();
const tempDirs = new Set<string>();
let exitHooksInstalled = false;

function killAllSync(): void {
  for (const child of liveChildren) child.kill('SIGKILL');
  liveChildren.clear();
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

function installExitHooks(): void {
  if (exitHooksInstalled) return;
  exitHooksInstalled = true;
  process.on('exit', killAllSync);
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      killAllSync();
      // re-raise with the default behaviour unless someone else handles it
      if (process.listenerCount(sig) === 0) process.kill(process.pid, sig);
    });
  }
}

function makeTempDir(prefix: string): string {
  installExitHooks();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Servers

export class EnvServer implements MongoServer {
  readonly kind = 'env' as const;
  readonly controllable = false;
  constructor(readonly url: string) {}
  private refuse(op: string): Promise<never> {
    return Promise.reject(
      new Error(`MongoServer.${op}(): the server from CLUSTER_TEST_MONGO_URL is not controllable (check .controllable)`),
    );
  }
  stop(): Promise<void> {
    return this.refuse('stop');
  }
  start(): Promise<void> {
    return this.refuse('start');
  }
  restart(): Promise<void> {
    return this.refuse('restart');
  }
}

class SpawnedServer implements MongoServer {
  readonly controllable = true;
  readonly url: string;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  constructor(
    readonly kind: 'mongod' | 'ferretdb',
    private readonly command: string,
    private readonly args: string[],
    port: number,
    readonly tempDir: string,
  ) {
    this.url = `mongodb://127.0.0.1:${port}/`;
  }

  async start(): Promise<void> {
    if (this.child) return;
    installExitHooks();
    // With setpriv (util-linux), the server also dies if this process is SIGKILLed.
    const setpriv = findExecutable('setpriv');
    const child = setpriv
      ? spawn(setpriv, ['--pdeathsig', 'KILL', '--', this.command, ...this.args], { stdio: ['ignore', 'pipe', 'pipe'] })
      : spawn(this.command, this.args, { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    liveChildren.add(child);
    let output = '';
    const keepTail = (chunk: Buffer): void => {
      output = (output + chunk.toString()).slice(-4000);
    };
    child.stdout?.on('data', keepTail);
    child.stderr?.on('data', keepTail);
    const exitReason = new Promise<string>((resolve) => {
      const done = (why: string): void => {
        liveChildren.delete(child);
        if (this.child === child) this.child = undefined;
        const tail = output.trim().split('\n').slice(-20).join('\n');
        resolve(`${this.kind} (${this.command} ${this.args.join(' ')}) ${why}${tail ? `; output tail:\n${tail}` : ''}`);
      };
      child.once('error', (err) => done(`failed to start: ${err.message}`));
      // 'close' (not 'exit') so the output tail is complete
      child.once('close', (code, signal) => done(`exited early with ${signal ?? `code ${String(code)}`}`));
    });
    this.exited = exitReason.then(() => undefined);
    try {
      await waitForPing(this.url, exitReason);
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
    await this.exited;
    clearTimeout(timer);
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  /** Stops the server for good and removes its data dir. */
  async dispose(): Promise<void> {
    await this.stop();
    fs.rmSync(this.tempDir, { recursive: true, force: true });
    tempDirs.delete(this.tempDir);
  }
}

const spawned = new Set<SpawnedServer>();

async function launch(kind: 'mongod' | 'ferretdb', command: string, argsFor: (port: number, dir: string) => string[]): Promise<MongoServer> {
  const port = await freePort();
  const dir = makeTempDir(`ddp-cluster-${kind}-`);
  const server = new SpawnedServer(kind, command, argsFor(port, dir), port, dir);
  spawned.add(server);
  try {
    await server.start();
  } catch (err) {
    await server.dispose();
    spawned.delete(server);
    throw err;
  }
  return server;
}

async function installFerretDb(): Promise<void> {
  process.stderr.write('[mongo] FerretDB not found; building it with `bash .ci/install-ferretdb.sh` (10 s - 2 min)...\n');
  await new Promise<void>((resolve, reject) => {
    const child = spawn('bash', [path.join(REPO_ROOT, '.ci', 'install-ferretdb.sh')], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    liveChildren.add(child);
    const timer = setTimeout(() => child.kill('SIGKILL'), INSTALL_TIMEOUT_MS);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      if (code === 0) resolve();
      else reject(new Error(`.ci/install-ferretdb.sh failed (${signal ?? `exit code ${String(code)}`})`));
    });
  });
}

async function findOrInstallFerretDb(): Promise<string | undefined> {
  const found = findExecutable('ferretdb', goBinDirs());
  if (found) return found;
  if (!findExecutable('go')) return undefined;
  await installFerretDb();
  return findExecutable('ferretdb', goBinDirs());
}

/**
 * Starts (or picks up) a MongoDB-wire server for tests. See the file comment for the order.
 * `local`: skip CLUSTER_TEST_MONGO_URL and spawn a controllable server of our own.
 */
export async function startMongo(o: { local?: boolean } = {}): Promise<MongoServer> {
  const envUrl = o.local ? undefined : process.env.CLUSTER_TEST_MONGO_URL;
  if (envUrl) {
    if (!/^mongodb(\+srv)?:\/\//.test(envUrl)) throw new Error(`CLUSTER_TEST_MONGO_URL is not a mongodb:// URL: ${envUrl}`);
    return new EnvServer(envUrl);
  }

  const mongod = findExecutable('mongod');
  if (mongod) {
    return launch('mongod', mongod, (port, dir) => ['--bind_ip', '127.0.0.1', '--port', String(port), '--dbpath', dir, '--quiet']);
  }

  const ferretdb = await findOrInstallFerretDb();
  if (ferretdb) {
    return launch('ferretdb', ferretdb, (port, dir) => [
      '--handler=sqlite',
      `--sqlite-url=file:${dir}/`,
      `--state-dir=${dir}`,
      `--listen-addr=127.0.0.1:${port}`,
      '--telemetry=disable',
      '--debug-addr=-',
      '--log-level=warn',
    ]);
  }

  throw new Error(
    [
      'No MongoDB available for the tests. Provide one of:',
      '  - CLUSTER_TEST_MONGO_URL=mongodb://host:port  (an existing server, used as is), or',
      '  - `mongod` on PATH (started on a free port with a temp dbpath), or',
      '  - FerretDB: install Go (>= 1.22) and run `bash .ci/install-ferretdb.sh`',
      '    (builds ferretdb into $(go env GOPATH)/bin, which is searched automatically).',
    ].join('\n'),
  );
}

/** Stops every spawned server and removes their temp dirs (final teardown). */
export async function disposeAll(): Promise<void> {
  const servers = [...spawned];
  spawned.clear();
  await Promise.all(servers.map((s) => s.dispose()));
}
