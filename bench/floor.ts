/**
 * `bench/floor.ts PORT BACKEND_PORT...`: the least a Node front can do for a SockJS client, to tell
 * Node's own cost from ddp-cluster's (`npm run bench -- --setups floor`, and `--cost` with floor).
 * It answers sockjs info itself (constant JSON, like ddp-cluster's entry does, no routing) and
 * forwards each upgrade round-robin to a backend: one connect, the client's head written in one
 * go, the sockets piped. Other requests (xhr polling) go to the backend the session id hashes to,
 * over a keep-alive agent, body and answer piped. No routing, no hop header, no retries, no health
 * checks: not a balancer.
 */
import http from 'node:http';
import net from 'node:net';

const [port, ...backends] = process.argv.slice(2).map(Number);
let next = 0;
const INFO = JSON.stringify({ websocket: true, origins: ['*:*'], cookie_needed: false, entropy: 1 });
const agent = new http.Agent({ keepAlive: true, maxSockets: 256, timeout: 4000 });
/** `/sockjs/<server>/<session>/<transport>`: the session id picks the backend, so polling is sticky. */
const SESSION = /^\/sockjs\/[^/]+\/([^/]+)\//;

function backendFor(url: string): number {
  const m = SESSION.exec(url);
  if (m === null) return backends[next++ % backends.length] as number;
  let h = 0;
  for (const c of m[1] as string) h = (h * 31 + c.charCodeAt(0)) | 0;
  return backends[Math.abs(h) % backends.length] as number;
}

const server = http.createServer((req, res) => {
  if (req.url === '/sockjs/info' || req.url?.startsWith('/sockjs/info?')) {
    res.writeHead(200, ['Content-Type', 'application/json; charset=UTF-8', 'Cache-Control', 'no-store', 'Access-Control-Allow-Origin', '*', 'Content-Length', String(INFO.length)]);
    return void res.end(INFO);
  }
  const up = http.request({ host: '127.0.0.1', port: backendFor(req.url ?? '/'), method: req.method, path: req.url, headers: req.headers, agent }, (answer) => {
    res.writeHead(answer.statusCode ?? 502, answer.rawHeaders);
    answer.pipe(res);
  });
  up.on('error', () => {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
  req.pipe(up);
});
server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => {
  const peer = net.connect(backends[next++ % backends.length] as number, '127.0.0.1');
  let h = `${req.method} ${req.url} HTTP/1.1\r\n`;
  for (let i = 0; i < req.rawHeaders.length; i += 2) h += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
  peer.write(h + '\r\n');
  if (head.length > 0) peer.write(head);
  peer.setNoDelay(true);
  socket.setNoDelay(true);
  const close = (): void => {
    peer.destroy();
    socket.destroy();
  };
  for (const s of [peer, socket]) {
    s.on('error', close);
    s.on('close', close);
  }
  peer.pipe(socket).pipe(peer);
});
server.listen(port, '127.0.0.1', () => process.send?.('ready'));
