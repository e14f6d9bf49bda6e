import net from 'node:net';

/**
 * A loopback TCP relay in front of a server, so a test can cut the network to it (a real
 * outage as clients see it: refused connects, dropped sockets) and restore it on the same port.
 */
export class TcpRelay {
  readonly #target: { host: string; port: number };
  readonly #sockets = new Set<net.Socket>();
  #server: net.Server | null = null;
  port = 0;

  constructor(targetHost: string, targetPort: number) {
    this.#target = { host: targetHost, port: targetPort };
  }

  async open(): Promise<number> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.#target);
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('close', () => this.#sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.port, '127.0.0.1', () => resolve());
    });
    this.#server = server;
    this.port = (server.address() as net.AddressInfo).port;
    return this.port;
  }

  /** Stops accepting and drops every relayed connection. */
  async cut(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    for (const s of this.#sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  async close(): Promise<void> {
    await this.cut();
  }
}

/** Host and port of a plain single-host mongodb:// URL, or null (e.g. mongodb+srv or a replica set list). */
export function singleHostOf(url: string): { host: string; port: number } | null {
  const m = /^mongodb:\/\/(?:[^@/]*@)?([^/:,?]+)(?::(\d+))?(?:[/?]|$)/.exec(url);
  return m ? { host: m[1] ?? '127.0.0.1', port: Number(m[2] ?? 27017) } : null;
}
