/**
 * `bench/floor.ts PORT BACKEND_PORT...`: the least a Node front can do for a websocket session
 * set-up, to tell Node's own cost from ddp-cluster's (`npm run bench -- --cost setup --setups floor`).
 * It answers sockjs info itself (constant JSON, like ddp-cluster's entry does, no routing) and
 * forwards each upgrade round-robin to a backend: one connect, the client's head written in one
 * go, the sockets piped. No routing, no hop header, no retries, no stickiness: not a balancer.
 */
import http from 'node:http';
import net from 'node:net';

const [port, ...backends] = process.argv.slice(2).map(Number);
let next = 0;
const INFO = JSON.stringify({ websocket: true, origins: ['*:*'], cookie_needed: false, entropy: 1 });

const server = http.createServer((req, res) => {
  res.writeHead(200, ['Content-Type', 'application/json; charset=UTF-8', 'Cache-Control', 'no-store', 'Access-Control-Allow-Origin', '*', 'Content-Length', String(INFO.length)]);
  res.end(INFO);
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
