/**
 * One benchmark backend: the reference DDP app (examples/node-ddp-app/app.ts: sockjs 0.3.24 installed
 * the way Meteor's ddp-server does it), with ddp-cluster attached when BENCH_ATTACH=1 (configured
 * by the CLUSTER_* env vars, and as the Meteor package attaches: with the direct SockJS entry) or
 * as a plain app otherwise. Started by bench/run.ts with an IPC
 * channel:
 *   child  → {type:'ready', url, pid}
 *   parent → {type:'stats'}  child → {type:'stats', sessions, cluster, members}
 *   parent → {type:'gc'}     child → {type:'gc'}   (needs --expose-gc; before RSS readings)
 *   parent → {type:'prof-start'} / {type:'prof-stop', file}: V8 CPU profile of a time window
 * SIGTERM closes cleanly.
 */
import fs from 'node:fs';
import { Session } from 'node:inspector';
import { attach, type ClusterHandle } from '../lib/attach';
import { createDdpApp } from '../examples/node-ddp-app/app';
import { meteorSockjsEntry } from '../server/sockjs-entry';

async function main(): Promise<void> {
  const id = process.env.BENCH_ID ?? 'app';
  const app = createDdpApp({ instanceId: id });
  await app.listen(Number(process.env.PORT ?? 0), '127.0.0.1');
  let cluster: ClusterHandle | null = null;
  if (process.env.BENCH_ATTACH === '1') {
    // The sessions too: rebalancing (and a drain) close them so their clients reconnect elsewhere.
    // Attached as the Meteor package attaches to a Meteor server: served-here SockJS requests go
    // straight into sockjs (server/sockjs-entry.ts), the app's listeners get the rest.
    const sockjsEntry = meteorSockjsEntry(app.server, app.streamServer, app.timeoutAdjustment);
    cluster = attach(app.server, {
      endpointUrl: app.origin, sessionCount: () => app.sessionCount(), sessions: () => app.sessions.values(), ...(sockjsEntry && { sockjsEntry }),
      sockjsServer: app.streamServer.server,
    });
    await cluster.ready();
  }
  process.on('message', (m: { type?: string }) => {
    if (m.type === 'stats') {
      const view = cluster?.view();
      process.send?.({
        type: 'stats',
        sessions: app.sessionCount(),
        cluster: cluster ? cluster.stats() : null,
        members: view ? view.members.map((x) => ({ id: x.id, healthy: x.healthy, state: x.state, sessions: x.load.sessions })) : null,
      });
    } else if (m.type === 'prof-start' || m.type === 'prof-stop') {
      // V8's CPU profiler (what node --cpu-prof uses), over exactly the measured window.
      void profiler(m as { type: string; file?: string }).then((r) => process.send?.({ type: m.type, ...r }));
    } else if (m.type === 'gc') {
      (globalThis as { gc?: () => void }).gc?.();
      process.send?.({ type: 'gc' });
    }
  });
  process.send?.({ type: 'ready', url: app.url, pid: process.pid });
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    const done = (): never => process.exit(0);
    setTimeout(done, 3000).unref();
    void (cluster ? cluster.close() : Promise.resolve()).then(() => app.close()).then(done, done);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('disconnect', stop);
}

let session: Session | null = null;

function post(method: string, params: Record<string, unknown> = {}): Promise<unknown> {
  return new Promise((resolve, reject) => {
    session?.post(method, params, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

async function profiler(m: { type: string; file?: string }): Promise<{ ok: boolean; error?: string }> {
  try {
    if (m.type === 'prof-start') {
      session = new Session();
      session.connect();
      await post('Profiler.enable');
      await post('Profiler.setSamplingInterval', { interval: 250 });
      await post('Profiler.start');
    } else {
      const { profile } = (await post('Profiler.stop')) as { profile: unknown };
      if (m.file) fs.writeFileSync(m.file, JSON.stringify(profile));
      session?.disconnect();
      session = null;
    }
    return { ok: true };
  } catch (err) {
    return { ok: false, error: String(err) };
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`backend failed: ${String((err as Error).stack ?? err)}\n`);
  process.exit(1);
});
