/**
 * `npx tsx bench/forwarder.ts`: CPU of one front process per HTTP request it forwards to a peer
 * through lib/balancer/proxy.ts's Forwarder (what every proxied xhr poll and send costs the entry
 * instance, without routing and the hop header). A peer answers like a sockjs poll (a frame, then
 * the end); a load process keeps 64 requests in flight over kept-alive connections for 4 s, after
 * a 4 s warm-up. Three processes, each alone in its event loop; three rounds, the median shown.
 */
import { fork } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Forwarder } from '../lib/balancer/proxy';

const DURATION_MS = 4000;
const role = process.argv[2];

if (role === 'peer') {
  const server = http.createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'Content-Type': 'application/javascript; charset=UTF-8', 'Access-Control-Allow-Origin': '*' });
      res.write('a["{\\"msg\\":\\"result\\",\\"id\\":\\"1\\"}"]\n');
      res.end();
    });
  });
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as AddressInfo).port));
} else if (role === 'front') {
  const target = new URL(`http://127.0.0.1:${process.argv[3]}`);
  const forwarder = new Forwarder();
  const server = http.createServer((req, res) => {
    forwarder.web(req, res, { target, headers: { 'x-ddp-cluster-hop': 'x'.repeat(200) }, timeoutMs: 120_000, body: null, fresh: false }, () => res.destroy());
  });
  server.listen(0, '127.0.0.1', () => process.send?.((server.address() as AddressInfo).port));
  process.on('message', () => process.send?.(process.cpuUsage()));
} else if (role === 'load') {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const end = Date.now() + DURATION_MS;
  let done = 0;
  const one = (): void => {
    if (Date.now() > end) return;
    http.request({ host: '127.0.0.1', port: Number(process.argv[3]), method: 'POST', path: '/sockjs/123/abcdefgh/xhr', agent, headers: { 'content-length': '0', origin: 'http://app.example' } }, (res) => {
      res.resume();
      res.on('end', () => {
        done++;
        one();
      });
    }).end();
  };
  for (let i = 0; i < 64; i++) one();
  setTimeout(() => process.send?.(done, () => process.exit(0)), DURATION_MS + 200);
} else {
  void (async () => {
    const child = (...args: string[]) => fork(__filename, args, { execArgv: ['--import', 'tsx'] });
    const first = async <T>(p: ReturnType<typeof fork>): Promise<T> => (await once(p, 'message'))[0] as T;
    const peer = child('peer');
    const peerPort = await first<number>(peer);
    const results: number[] = [];
    for (let round = 0; round < 3; round++) {
      const front = child('front', String(peerPort));
      const frontPort = await first<number>(front);
      await first<number>(child('load', String(frontPort))); // warm-up
      front.send('cpu');
      const before = await first<NodeJS.CpuUsage>(front);
      const n = await first<number>(child('load', String(frontPort)));
      front.send('cpu');
      const after = await first<NodeJS.CpuUsage>(front);
      const us = (after.user + after.system - before.user - before.system) / n;
      results.push(us);
      process.stdout.write(`round ${round + 1}: ${Math.round(n / (DURATION_MS / 1000))} requests/s, front CPU ${us.toFixed(1)} µs per forwarded request\n`);
      front.kill();
    }
    peer.kill();
    results.sort((a, b) => a - b);
    process.stdout.write(`median: ${(results[1] as number).toFixed(1)} µs of front CPU per forwarded request\n`);
  })();
}
