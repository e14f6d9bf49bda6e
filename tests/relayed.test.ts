/**
 * A polling session that lives on b while its requests reach c, which relays them to b: c dies
 * (kill -9). An answer b wrote to c that c never passed on must not vanish while the session goes
 * on (a browser retries the failed poll on the same session): the session is refused from then on
 * (404), so its client reconnects. Polls relayed by a live peer, whose idle connections it
 * closes, lose nothing.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { LOSS_WINDOW_MS, RelayedPolls, mayHaveLost } from '../lib/balancer/relayed';
import { httpRequest } from '../examples/node-ddp-app/clients';
import { mongo, uniqueDbUrl } from './support/mongo';
import { spawnInstance, startCluster, waitView, type ChildInstance, type Instance } from './support/cluster';
import { eventually } from './support/wait';

const frame = (msg: Record<string, unknown>): string => JSON.stringify([JSON.stringify(msg)]);


describe('polls relayed by a peer that dies (three real instances, one killed with -9)', function () {
  this.timeout(120_000);
  let cluster: Instance[] = [];
  let relay: ChildInstance | null = null;

  afterEach(async () => {
    await relay?.kill();
    relay = null;
    await Promise.all(cluster.map((i) => i.close()));
    cluster = [];
  });

  /** a and b in this process, c (the relay) in its own; a session on b, reached through `entry`. */
  async function start(title: string): Promise<{ a: Instance; b: Instance; c: ChildInstance; path: string }> {
    const url = uniqueDbUrl(mongo().url, title);
    cluster = await startCluster(['a', 'b'], url);
    relay = await spawnInstance('c', { CLUSTER_DISCOVERY_URL: url });
    const [a, b] = cluster as [Instance, Instance];
    await Promise.all(cluster.map((i) => waitView(i.cluster, 'c serving', (v) => v.byId.get('c')?.state === 'serving' && v.byId.get('c')?.healthy === true)));
    const hashB = b.cluster.view().self?.endpointHash ?? '';
    assert.match(hashB, /^[0-9a-f]+$/);
    return { a, b, c: relay, path: `/cluster-ddp/${hashB}/web/000/${randomBytes(6).toString('hex')}` };
  }

  /** Opens the session and its DDP connection, every request through `entry`. */
  async function open(entry: string, path: string): Promise<void> {
    assert.equal((await httpRequest('POST', `${entry}${path}/xhr`)).body, 'o\n');
    assert.equal((await httpRequest('POST', `${entry}${path}/xhr_send`, frame({ msg: 'connect', version: '1', support: ['1'] }))).status, 204);
    await eventually(async () => (await httpRequest('POST', `${entry}${path}/xhr`)).body.includes('connected'), 'DDP connected');
  }

  /**
   * A poll through `entry` that b holds (it reached b), wrapped so awaiting this doesn't await the
   * poll; `answered()`: b has written to the connection the poll came on since.
   */
  async function pending(entry: string, path: string, b: Instance): Promise<{ poll: Promise<string>; answered: () => boolean }> {
    let socket: import('node:net').Socket | null = null;
    let before = 0;
    const seen = (req: import('node:http').IncomingMessage): void => {
      // A relaying peer sends the member the path its sockjs knows (the session id and transport stay).
      if (req.url?.endsWith(`${path.slice(path.lastIndexOf('/'))}/xhr`) !== true) return;
      socket = req.socket;
      before = req.socket.bytesWritten;
    };
    b.app.server.prependListener('request', seen);
    const poll = httpRequest('POST', `${entry}${path}/xhr`, undefined, { timeoutMs: 60_000 }).then((r) => `${r.status} ${r.body}`, (err: Error) => `failed: ${err.message}`);
    await eventually(() => socket !== null, 'the poll reached b');
    b.app.server.off('request', seen);
    return { poll, answered: () => (socket?.bytesWritten ?? 0) > before };
  }

  it('an answer written to a relay that then died: the session is refused (404) everywhere, not continued with a hole', async () => {
    const { a, b, c, path } = await start('relay_lost');
    await open(c.url, path);
    const { poll, answered } = await pending(c.url, path, b);
    // c stops reading; b answers the waiting poll with the pong of a ping sent to b directly: the
    // answer sits unread in c's socket when c dies.
    c.proc.kill('SIGSTOP');
    assert.equal((await httpRequest('POST', `${b.url}${path}/xhr_send`, frame({ msg: 'ping', id: 'p1' }))).status, 204);
    await eventually(answered, 'b answered the poll c relayed');
    await c.kill('SIGKILL');
    assert.doesNotMatch(await poll, /pong/, 'the client never got the answer through the dead relay');
    await eventually(() => b.cluster.stats().lostRelayedPolls === 1, 'b marks the session lost');
    for (const entry of [b.url, a.url]) {
      const r = await httpRequest('POST', `${entry}${path}/xhr`);
      assert.equal(r.status, 404, `a retried poll through ${entry === b.url ? 'b' : 'a'} is refused: ${r.status} ${r.body}`);
      assert.equal((await httpRequest('POST', `${entry}${path}/xhr_send`, frame({ msg: 'ping', id: 'p2' }))).status, 404);
    }
    assert.ok(b.logs.some((l) => l.includes('balancer.relayed_poll_lost')), 'logged');
  });

  it('the same for a session b carries to a (translated polling): refused (404), not continued with a hole', async () => {
    const { a, b, c, path: pinnedB } = await start('relay_lost_carried');
    const hashA = a.cluster.view().self?.endpointHash ?? '';
    const hashB = b.cluster.view().self?.endpointHash ?? '';
    const path = pinnedB.replace(`/cluster-ddp/${hashB}/`, `/cluster-ddp/${hashA}.${hashB}/`);
    await open(c.url, path);
    assert.equal(b.cluster.stats().translatedSessions, 1, 'b carries the session');
    const { poll, answered } = await pending(c.url, path, b);
    c.proc.kill('SIGSTOP');
    assert.equal((await httpRequest('POST', `${b.url}${path}/xhr_send`, frame({ msg: 'ping', id: 'p1' }))).status, 204);
    // The pong comes back from a over the carry websocket; b writes it to c's connection, unread.
    await eventually(answered, 'b answered the poll c relayed');
    await c.kill('SIGKILL');
    assert.doesNotMatch(await poll, /pong/);
    await eventually(() => b.cluster.stats().lostRelayedPolls === 1, 'b marks the session lost');
    const r = await httpRequest('POST', `${b.url}${path}/xhr`);
    assert.equal(r.status, 404, `${r.status} ${r.body}`);
  });

  it('polls relayed by a live peer lose no session, also when the peer closes its idle connections', async () => {
    const { a, b, path } = await start('relay_idle');
    // The connections b serves this session's requests on (a's kept-alive connections to b).
    const carriers = new Set<import('node:net').Socket>();
    const sid = path.slice(path.lastIndexOf('/') + 1);
    b.app.server.prependListener('request', (req: import('node:http').IncomingMessage) => {
      if (req.url?.includes(sid) === true) carriers.add(req.socket);
    });
    await open(a.url, path);
    for (const id of ['p1', 'p2', 'p3']) {
      assert.equal((await httpRequest('POST', `${a.url}${path}/xhr_send`, frame({ msg: 'ping', id }))).status, 204);
      assert.match((await httpRequest('POST', `${a.url}${path}/xhr`)).body, new RegExp(`pong.*${id}`));
    }
    assert.ok(carriers.size > 0);
    // a drops a connection it kept alive after PEER_IDLE_MS unused: b sees the peer end it.
    await eventually(() => [...carriers].every((s) => s.destroyed), 'a closed its idle connections to b', 20_000);
    assert.equal(b.cluster.stats().lostRelayedPolls, 0, 'no session marked lost');
    assert.equal((await httpRequest('POST', `${a.url}${path}/xhr_send`, frame({ msg: 'ping', id: 'p4' }))).status, 204);
    assert.match((await httpRequest('POST', `${a.url}${path}/xhr`)).body, /pong.*p4/, 'the session goes on');
  });

  it('a relay that dies while its poll waits: sockjs ends the aborted session itself, nothing is marked lost', async () => {
    const { b, c, path } = await start('relay_waiting');
    await open(c.url, path);
    const { poll } = await pending(c.url, path, b);
    await c.kill('SIGKILL');
    assert.match(await poll, /^failed/, 'the waiting poll failed with its relay');
    // sockjs 0.3.24 closes a session whose waiting poll was aborted (no disconnect delay): the
    // client reconnects. Nothing had been written, so this is not a lost answer.
    await eventually(async () => (await httpRequest('POST', `${b.url}${path}/xhr_send`, frame({ msg: 'ping', id: 'p1' }))).status === 404, 'the aborted session is gone');
    assert.equal(b.cluster.stats().lostRelayedPolls, 0, 'no session marked lost');
  });
});

describe('RelayedPolls (real sockets, one node:http server)', () => {
  let server: import('node:http').Server;
  let relayed: RelayedPolls;
  let lost: string[];
  /** Answers a poll at once (`answer`), or never (undefined); `close` asks node:http to end the connection after it. */
  let answer: string | undefined;
  let close = false;
  /** Sessions whose poll reached the server. */
  const seen = new Set<string>();

  beforeEach(async () => {
    lost = [];
    relayed = new RelayedPolls((id) => lost.push(id));
    seen.clear();
    server = http.createServer((req, res) => {
      seen.add(req.url?.slice(1) ?? '');
      relayed.watch(req.url?.slice(1) ?? '', req, res);
      if (close) res.setHeader('Connection', 'close');
      if (answer !== undefined) res.end(answer);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
  });

  afterEach(async () => {
    server.closeAllConnections();
    server.close();
    answer = undefined;
    close = false;
  });

  /** A kept-alive connection that has sent one poll for `sid`: once its answer arrived (`wantAnswer`), or once the server holds it. */
  async function relay(sid: string, wantAnswer: boolean): Promise<net.Socket> {
    const s = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    await once(s, 'connect');
    s.write(`POST /${sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n`);
    if (wantAnswer) {
      let got = '';
      await new Promise<void>((resolve) => s.on('data', (c: Buffer) => {
        got += c.toString();
        if (got.includes('\r\n\r\n') && got.endsWith(answer ?? '')) resolve();
      }));
    } else {
      await eventually(() => seen.has(sid), 'the poll reached the server');
    }
    return s;
  }

  it('the peer ends the connection right after an answer finished on it: the session is lost', async () => {
    answer = 'a["frame"]';
    const s = await relay('s1', true);
    s.end();
    await eventually(() => lost.length === 1, 'marked lost');
    assert.deepEqual(lost, ['s1']);
    assert.ok(relayed.lost('s1'));
    assert.ok(!relayed.lost('s2'));
  });

  it('the peer resets the connection with the answer unread: lost; ends it while the poll waits: not lost', async () => {
    answer = 'a["frame"]';
    const s = await relay('s1', true);
    s.resetAndDestroy();
    await eventually(() => lost.length === 1, 'marked lost');
    answer = undefined;
    const w = await relay('s2', false);
    w.end();
    await once(w, 'close');
    assert.deepEqual(lost, ['s1'], 'a waiting poll had nothing written');
  });

  it('mayHaveLost: an answer finished within the window, or begun and open, may be lost; one not begun or long finished is not', () => {
    assert.equal(mayHaveLost(true, 1_000, 1_000 + LOSS_WINDOW_MS + 1), false);
    assert.equal(mayHaveLost(false, 1_000, 1_000 + LOSS_WINDOW_MS), true);
    assert.equal(mayHaveLost(false, -1, 5_000), false, 'not begun, open: nothing written');
    assert.equal(mayHaveLost(true, -1, 5_000), true, 'begun, open: a streaming answer');
  });

  it('this side ends the connection after its answer (Connection: close): the peer answering with its own end loses nothing', async () => {
    answer = 'a["frame"]';
    close = true;
    const s = await relay('s1', true);
    await once(s, 'end');
    s.end();
    await once(s, 'close');
    assert.deepEqual(lost, []);
  });
});
