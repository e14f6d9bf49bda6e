/**
 * `npx ddp-cluster <command>`:
 *
 *   status --discovery <url> [--secret <s>] [--collection <name>] [--json]   the membership table
 *   drain <instance-id> --discovery <url> --secret <s> [--wait]             ask an instance to drain
 *   dashboard-password [--secret <s>]                                        the derived dashboard password
 *
 * Options fall back to the instances' own variables (CLUSTER_DISCOVERY_URL, CLUSTER_SECRET,
 * CLUSTER_COLLECTION): prefer them for secrets, which would otherwise show in `ps`.
 */
import { userInfo, hostname } from 'node:os';
import { Command, InvalidArgumentError, Option } from 'commander';
import { MongoClient } from 'mongodb';
import { DRAIN_FIELD, makeDrainRequest } from './commands';
import { ConfigError, parseConfig, type ClusterConfig } from './config';
import { dashboardPasswordFrom } from './dashboard/auth';
import { apiMember, type ApiMember } from './dashboard';
import { Registry } from './discovery/registry';
import type { MembershipView } from './discovery/view';
import { EMPTY_LOAD } from './load';
import { createLogger } from './log';
import { ClusterError } from './outcomes';
import { PACKAGE_VERSION } from './version';
import { byMachine } from './workers/group';

export interface CliIo {
  readonly out: (text: string) => void;
  readonly err: (text: string) => void;
}

const defaultIo: CliIo = {
  out: (t) => void process.stdout.write(t),
  err: (t) => void process.stderr.write(t),
};

/** A failure to report in one line and exit with `exitCode`. */
class CliError extends ClusterError {
  constructor(message: string, readonly exitCode: number) {
    super('DDPC_ERR_CLI', message);
    this.name = 'CliError';
  }
}

interface Common {
  discovery?: string;
  secret?: string;
  collection?: string;
  timeout: number;
}

interface Ignored {
  readonly id: string;
  readonly reason: string;
}

/** Runs the CLI; resolves with the exit code (never calls process.exit itself). */
export async function run(argv: readonly string[], io: CliIo = defaultIo): Promise<number> {
  let code = 0;
  const program = new Command('ddp-cluster')
    .description('Inspect and operate a ddp-cluster from its discovery database.')
    .version(PACKAGE_VERSION)
    .exitOverride()
    .configureOutput({ writeOut: io.out, writeErr: io.err });

  const common = (cmd: Command, secretRequired: boolean): Command => cmd
    .addOption(new Option('--discovery <url>', 'MongoDB URL of the registry').env('CLUSTER_DISCOVERY_URL'))
    .addOption(new Option('--secret <secret>', secretRequired ? 'CLUSTER_SECRET of the cluster (signs the request)'
      : 'CLUSTER_SECRET of the cluster: verify entry signatures').env('CLUSTER_SECRET'))
    .addOption(new Option('--collection <name>', 'registry collection').env('CLUSTER_COLLECTION').default('clusterEndpoints'))
    .addOption(new Option('--timeout <seconds>', 'give up after this long').default(10).argParser(seconds));

  common(program.command('status'), false)
    .description('print the membership table')
    .option('--json', 'print JSON instead of a table')
    .action(async (o: Common & { json?: boolean }) => {
      code = await status(o, io);
    });

  common(program.command('drain'), true)
    .description('ask an instance to drain (a signed request it acts on at its next heartbeat)')
    .argument('<instance-id>', 'id of the member to drain (as `status` shows it)')
    .option('--wait', 'wait until the instance advertises "draining"')
    .action(async (id: string, o: Common & { wait?: boolean }) => {
      code = await drain(id, o, io);
    });

  program.command('dashboard-password')
    .description('print the dashboard password derived from CLUSTER_SECRET (when CLUSTER_DASHBOARD_PASSWORD is not set)')
    .addOption(new Option('--secret <secret>', 'CLUSTER_SECRET of the cluster').env('CLUSTER_SECRET'))
    .action((o: { secret?: string }) => {
      const c = configOf({ secret: o.secret, timeout: 0 }, { needsDiscovery: false, needsSecret: true });
      io.out(`${dashboardPasswordFrom(c.secret as string)}\n`);
    });

  try {
    await program.parseAsync([...argv], { from: 'user' });
    return code;
  } catch (err) {
    if (err instanceof CliError) {
      io.err(`ddp-cluster: ${err.message}\n`);
      return err.exitCode;
    }
    if (err instanceof ConfigError) {
      const flag = /discoveryUrl/.test(err.variable) ? '--discovery' : /secret/i.test(err.variable) ? '--secret'
        : /collection/.test(err.variable) ? '--collection' : err.variable;
      io.err(`ddp-cluster: ${flag} ${err.value} is invalid: ${err.fix}\n`);
      return 1;
    }
    const ce = err as { code?: string; exitCode?: number };
    if (typeof ce.code === 'string' && ce.code.startsWith('commander.')) return ce.exitCode ?? 1;
    io.err(`ddp-cluster: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
}

function seconds(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError('use a number of seconds, e.g. 10');
  return n;
}

function configOf(o: Common, need: { needsDiscovery: boolean; needsSecret: boolean }): ClusterConfig {
  if (need.needsDiscovery && !o.discovery) throw new CliError('--discovery <mongodb-url> (or CLUSTER_DISCOVERY_URL) is required', 1);
  if (need.needsSecret && !o.secret) throw new CliError('--secret (or CLUSTER_SECRET) is required', 1);
  return parseConfig({
    discoveryUrl: o.discovery ?? null, secret: o.secret ?? null, collection: o.collection, instanceId: 'ddp-cluster-cli',
  }, {});
}

/** A watch-only registry's first view, and the entries it ignored (bad or missing signatures). */
async function look(config: ClusterConfig, timeoutS: number): Promise<{ registry: Registry; view: MembershipView; ignored: Ignored[] }> {
  const ignored = new Map<string, Ignored>();
  let lastError = '';
  const logger = createLogger('warn', {}, (line) => {
    try {
      const e = JSON.parse(line) as { event?: string; entry?: unknown; reason?: unknown; error?: { message?: unknown } };
      if (e.event === 'discovery.entry_ignored') {
        const id = String(e.entry);
        ignored.set(id, { id, reason: String(e.reason) });
      }
      if (e.event === 'discovery.unreachable') lastError = String(e.error?.message ?? '');
    } catch {
      // not ours
    }
  });
  const registry = new Registry({ config, logger, load: () => EMPTY_LOAD });
  registry.start();
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new CliError(`discovery not reachable within ${timeoutS} s${lastError ? `: ${lastError}` : ''}`, 2)), timeoutS * 1000);
  });
  try {
    await Promise.race([registry.ready(), timedOut]);
  } catch (err) {
    await registry.close();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  return { registry, view: registry.view(), ignored: [...ignored.values()] };
}

async function status(o: Common & { json?: boolean }, io: CliIo): Promise<number> {
  const config = configOf(o, { needsDiscovery: true, needsSecret: false });
  const { registry, view, ignored } = await look(config, o.timeout);
  await registry.close();
  const now = Date.now();
  const members = byMachine(view.members).map((m) => apiMember(m, now, null));
  const healthy = members.filter((m) => m.healthy);
  const totals = {
    members: members.length, healthy: healthy.length,
    sessions: healthy.reduce((s, m) => s + m.sessions, 0), capacity: healthy.reduce((s, m) => s + m.capacity, 0),
  };
  if (o.json) {
    io.out(`${JSON.stringify({ collection: config.collection, verified: config.secret !== null, totals, members, ignored }, null, 2)}\n`);
    return 0;
  }
  io.out(`${totals.members} member${totals.members === 1 ? '' : 's'}, ${totals.healthy} healthy, ${totals.sessions} sessions of ${totals.capacity} capacity (collection ${config.collection})\n`);
  if (members.length > 0) io.out(table(members, now));
  if (config.secret === null) {
    io.out('signatures not verified: pass --secret (or set CLUSTER_SECRET) to ignore forged entries\n');
  } else {
    io.out(`signatures verified; ${ignored.length} entr${ignored.length === 1 ? 'y' : 'ies'} ignored`
      + `${ignored.length ? `: ${ignored.map((i) => `${i.id} (${i.reason})`).join(', ')}` : ''}\n`);
  }
  return 0;
}

function table(members: readonly ApiMember[], now: number): string {
  const head = ['ID', 'SERVICE', 'STATE', 'HEALTH', 'SESSIONS', 'CAPACITY', 'ELU', 'DELAY', 'CPU', 'RSS', 'UPTIME', 'VERSION', 'HEARTBEAT', 'HOST', 'ENDPOINT'];
  const rows = members.map((m) => [
    m.id, m.service, m.state, m.healthy ? 'up' : 'DOWN', String(m.sessions), String(m.capacity),
    `${Math.round(m.elu * 100)}%`, `${m.delayMs.toFixed(1)}ms`, `${Math.round(m.cpu * 100)}%`, `${Math.round(m.rss / 1048576)}MB`,
    duration(now - m.startedAt), `${m.appVersion ?? '-'}/${m.pkgVersion}`, `${(m.heartbeatAgeMs / 1000).toFixed(1)}s`, m.host,
    m.endpoint + (m.balancer ? ` (balancer ${m.balancer})` : ''),
  ]);
  const right = new Set([4, 5, 6, 7, 8, 9, 10, 12]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells.map((c, i) => (i === cells.length - 1 ? c : right.has(i) ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0))).join('  ').trimEnd();
  return [line(head), ...rows.map(line)].join('\n') + '\n';
}

function duration(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  if (s < 172_800) return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, '0')}m`;
  return `${Math.floor(s / 86_400)}d`;
}

async function drain(id: string, o: Common & { wait?: boolean }, io: CliIo): Promise<number> {
  const config = configOf(o, { needsDiscovery: true, needsSecret: true });
  const secret = config.secret as string;
  const { registry, view, ignored } = await look(config, o.timeout);
  try {
    const member = view.byId.get(id);
    if (!member) {
      const bad = ignored.find((i) => i.id === id);
      throw new CliError(bad ? `member ${id} is in the registry but its entry was ignored (${bad.reason}): wrong --secret?`
        : `no member ${id} in ${config.collection} (ids: ${view.members.map((m) => m.id).join(', ') || 'none'})`, 1);
    }
    if (member.state === 'draining') {
      io.out(`${id} is already draining\n`);
      return 0;
    }
    const request = makeDrainRequest(secret, id, { requestedBy: `${safeUser()}@${hostname()}`.slice(0, 200) });
    const client = new MongoClient(config.discoveryUrl as string, { serverSelectionTimeoutMS: o.timeout * 1000, appName: 'ddp-cluster-cli' });
    try {
      await client.connect();
      const r = await client.db().collection<{ _id: string }>(config.collection).updateOne({ _id: id }, { $set: { [DRAIN_FIELD]: request } });
      if (r.matchedCount === 0) throw new CliError(`member ${id} left the registry before the request was written`, 1);
    } finally {
      await client.close().catch(() => undefined);
    }
    io.out(`drain requested for ${id} (${member.endpoint}) at ${request.requestedAt.toISOString()}; it acts on its next heartbeat\n`);
    if (!o.wait) return 0;
    const drained = await waitFor(registry, (v) => v.byId.get(id)?.state === 'draining' || !v.byId.has(id), o.timeout * 1000);
    if (!drained) throw new CliError(`${id} did not start draining within ${o.timeout} s (does its version act on drain requests?)`, 3);
    io.out(`${id} is draining\n`);
    return 0;
  } finally {
    await registry.close();
  }
}

function waitFor(registry: Registry, pred: (v: MembershipView) => boolean, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (pred(registry.view())) return resolve(true);
    const onView = (v: MembershipView): void => {
      if (!pred(v)) return;
      done(true);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      registry.off('view', onView);
      resolve(ok);
    };
    registry.on('view', onView);
  });
}

function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return '?';
  }
}

/** The process entry point (bin/ddp-cluster.js, `npm run cli`). */
export function main(argv: readonly string[] = process.argv.slice(2)): void {
  void run(argv).then((code) => {
    process.exitCode = code;
    // Everything is closed by now; don't let a stray handle keep a one-shot command alive.
    setTimeout(() => process.exit(code), 2000).unref();
  });
}

if (require.main === module) main();
