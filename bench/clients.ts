/**
 * Lean DDP clients for the load generator. They speak exactly what Meteor's browser client speaks
 * (GET <root>/sockjs/info, honour `base_url`, then the SockJS websocket or xhr-polling transport,
 * then DDP), but with a per-client source address (127.0.x.2) and cookie jar, and without
 * sockjs-client's per-message overhead, so one load-generator process can drive thousands of them.
 * examples/node-ddp-app/clients.ts holds the reference clients (sockjs-client, ws, raw xhr).
 */
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';

export type Transport = 'ws' | 'xhr';

export const DDP_CONNECT = JSON.stringify({ msg: 'connect', version: '1', support: ['1', 'pre2', 'pre1'] });

/** Source address for client number k: 250 different /24s (nginx ip_hash keys on the first 3 octets). */
export function sourceAddress(k: number): string {
  return `127.0.${(k % 250) + 1}.2`;
}

export class ClientError extends Error {
  constructor(message: string, readonly stage: string) {
    super(message);
    this.name = 'ClientError';
  }
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export interface OpenOptions {
  /** ROOT_URL of the entry point, e.g. http://127.0.0.1:3000 */
  readonly entry: string;
  readonly localAddress: string;
  readonly timeoutMs: number;
}

function sockjsIds(): { server: string; session: string } {
  return { server: String(Math.floor(Math.random() * 1000)), session: randomBytes(6).toString('base64url') };
}

/** Cookie jar of one client (HAProxy's `cookie SRV insert` needs it, as a browser would keep it). */
class Jar {
  readonly #cookies = new Map<string, string>();

  take(headers: http.IncomingHttpHeaders): void {
    for (const line of headers['set-cookie'] ?? []) {
      const pair = line.split(';', 1)[0] ?? '';
      const eq = pair.indexOf('=');
      if (eq > 0) this.#cookies.set(pair.slice(0, eq).trim(), pair.slice(eq + 1).trim());
    }
  }

  header(): string | undefined {
    if (this.#cookies.size === 0) return undefined;
    return [...this.#cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

interface HttpResult {
  status: number;
  body: string;
}

function request(agent: http.Agent, jar: Jar, method: string, url: string, body: string | undefined, timeoutMs: number): Promise<HttpResult> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    const cookie = jar.header();
    if (cookie) headers.cookie = cookie;
    if (body !== undefined) {
      headers['content-type'] = 'text/plain;charset=UTF-8';
      headers['content-length'] = String(Buffer.byteLength(body));
    }
    const req = http.request(url, { method, agent, headers }, (res) => {
      jar.take(res.headers);
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${url} timed out after ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * One DDP session. `open()` does info + transport open + DDP connect; `call()` a method; `closed`
 * resolves when the transport is gone for any reason.
 */
export abstract class LeanDdp {
  sessionId = '';
  /** sockjs base the transport used (base_url from info, or <entry>/sockjs). */
  base = '';
  protected readonly agent: http.Agent;
  protected readonly jar = new Jar();
  protected readonly pending = new Map<string, Pending>();
  protected nextId = 1;
  protected connected: Pending | null = null;
  protected isClosed = false;
  #closedResolve!: (why: string) => void;
  readonly closed: Promise<string> = new Promise((r) => (this.#closedResolve = r));

  constructor(protected readonly o: OpenOptions) {
    this.agent = new http.Agent({ keepAlive: true, maxSockets: 2, localAddress: o.localAddress });
  }

  /** False once the transport is gone. */
  get alive(): boolean {
    return !this.isClosed;
  }

  protected abstract openTransport(): Promise<void>;
  protected abstract sendRaw(messages: string[]): void;
  abstract close(): void;

  async open(): Promise<this> {
    const info = await request(this.agent, this.jar, 'GET', `${this.o.entry}/sockjs/info`, undefined, this.o.timeoutMs)
      .catch((e: Error) => { throw new ClientError(e.message, 'info'); });
    if (info.status !== 200) throw new ClientError(`info answered ${info.status}`, 'info');
    const parsed = JSON.parse(info.body) as { base_url?: unknown };
    this.base = typeof parsed.base_url === 'string' ? parsed.base_url : `${this.o.entry}/sockjs`;
    await this.openTransport();
    const done = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => reject(new ClientError('DDP connect timed out', 'connect')), this.o.timeoutMs);
      this.connected = { resolve, reject, timer };
    });
    this.sendRaw([DDP_CONNECT]);
    await done;
    return this;
  }

  /** Resolves with the method result; rejects on error, close or timeout. */
  call(method: string, params: unknown[], timeoutMs = this.o.timeoutMs): Promise<unknown> {
    if (this.isClosed) return Promise.reject(new ClientError('closed', 'call'));
    const id = String(this.nextId++);
    const p = new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ClientError(`method ${method} timed out`, 'call'));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
    });
    this.sendRaw([JSON.stringify({ msg: 'method', id, method, params })]);
    return p;
  }

  /** Feeds one SockJS frame ('o', 'h', 'a[...]', 'c[...]'). */
  protected frame(text: string): void {
    const t = text.charCodeAt(0);
    if (t === 0x61 /* a */) {
      const messages = JSON.parse(text.slice(1)) as string[];
      for (const m of messages) this.message(m);
    } else if (t === 0x63 /* c */) {
      this.finish(`sockjs close ${text.slice(1).trim()}`);
    }
  }

  protected message(text: string): void {
    const msg = JSON.parse(text) as { msg?: string; id?: string; session?: string; result?: unknown; error?: unknown };
    switch (msg.msg) {
      case 'result': {
        const p = msg.id === undefined ? undefined : this.pending.get(msg.id);
        if (!p || msg.id === undefined) return;
        this.pending.delete(msg.id);
        clearTimeout(p.timer);
        if (msg.error !== undefined) p.reject(new ClientError(`method error ${JSON.stringify(msg.error)}`, 'call'));
        else p.resolve(msg.result);
        return;
      }
      case 'connected':
        this.sessionId = msg.session ?? '';
        if (this.connected) {
          clearTimeout(this.connected.timer);
          this.connected.resolve(this.sessionId);
          this.connected = null;
        }
        return;
      case 'ping':
        this.sendRaw([JSON.stringify(msg.id === undefined ? { msg: 'pong' } : { msg: 'pong', id: msg.id })]);
        return;
      default:
        return;
    }
  }

  protected finish(why: string): void {
    if (this.isClosed) return;
    this.isClosed = true;
    const err = new ClientError(`connection closed: ${why}`, 'closed');
    if (this.connected) {
      clearTimeout(this.connected.timer);
      this.connected.reject(err);
      this.connected = null;
    }
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    this.agent.destroy();
    this.#closedResolve(why);
  }
}

/** SockJS websocket transport: ws://<base>/<server>/<session>/websocket, SockJS framing. */
export class SockjsWsDdp extends LeanDdp {
  #ws: WebSocket | null = null;

  protected openTransport(): Promise<void> {
    // Like a browser's info request, done: don't keep an idle keep-alive socket per session.
    this.agent.destroy();
    const { server, session } = sockjsIds();
    const url = `${this.base.replace(/^http/, 'ws')}/${server}/${session}/websocket`;
    const cookie = this.jar.header();
    const ws = new WebSocket(url, {
      localAddress: this.o.localAddress, perMessageDeflate: false, handshakeTimeout: this.o.timeoutMs,
      headers: cookie ? { cookie } : {},
    });
    this.#ws = ws;
    return new Promise<void>((resolve, reject) => {
      let opened = false;
      ws.on('message', (data: WebSocket.RawData) => {
        const text = data.toString();
        if (!opened) {
          if (text === 'o') {
            opened = true;
            resolve();
          } else {
            reject(new ClientError(`unexpected first frame ${text.slice(0, 40)}`, 'open'));
          }
          return;
        }
        this.frame(text);
      });
      ws.on('unexpected-response', (_req, res) => {
        reject(new ClientError(`upgrade refused: HTTP ${res.statusCode ?? 0}`, 'upgrade'));
        ws.terminate();
      });
      ws.on('error', (e) => {
        if (!opened) reject(new ClientError(e.message, 'upgrade'));
      });
      ws.on('close', (code) => {
        if (!opened) reject(new ClientError(`closed before open (${code})`, 'upgrade'));
        this.finish(`ws close ${code}`);
      });
    });
  }

  protected sendRaw(messages: string[]): void {
    if (this.#ws?.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(messages));
  }

  close(): void {
    const ws = this.#ws;
    if (!ws || ws.readyState === WebSocket.CLOSED) return this.finish('closed by client');
    if (ws.readyState === WebSocket.CONNECTING) ws.terminate();
    else ws.close();
  }

  /** Drops the TCP connection at once (no close handshake). */
  terminate(): void {
    this.#ws?.terminate();
  }
}

/** SockJS xhr-polling: POST <base>/<server>/<session>/xhr (long poll) and /xhr_send. */
export class SockjsXhrDdp extends LeanDdp {
  #url = '';
  #outbox: string[] = [];
  #sending = false;
  /** Long polls last up to the server's heartbeat (25 s in sockjs 0.3.24 defaults, 45 s in Meteor). */
  static readonly POLL_TIMEOUT_MS = 60_000;

  protected async openTransport(): Promise<void> {
    const { server, session } = sockjsIds();
    this.#url = `${this.base}/${server}/${session}`;
    const res = await request(this.agent, this.jar, 'POST', `${this.#url}/xhr`, undefined, this.o.timeoutMs)
      .catch((e: Error) => { throw new ClientError(e.message, 'open'); });
    if (res.status !== 200 || !res.body.startsWith('o')) throw new ClientError(`xhr open answered ${res.status} ${res.body.slice(0, 40)}`, 'open');
    void this.#pollLoop();
  }

  async #pollLoop(): Promise<void> {
    while (!this.isClosed) {
      let res: HttpResult;
      try {
        res = await request(this.agent, this.jar, 'POST', `${this.#url}/xhr`, undefined, SockjsXhrDdp.POLL_TIMEOUT_MS);
      } catch (e) {
        return this.finish(`poll failed: ${(e as Error).message}`);
      }
      if (res.status !== 200) return this.finish(`poll answered ${res.status}`);
      for (const line of res.body.split('\n')) if (line) this.frame(line);
    }
  }

  protected sendRaw(messages: string[]): void {
    if (this.isClosed) return;
    this.#outbox.push(...messages);
    if (!this.#sending) void this.#flush();
  }

  /** Like sockjs-client: one xhr_send at a time, messages queued meanwhile go in the next one. */
  async #flush(): Promise<void> {
    this.#sending = true;
    while (this.#outbox.length > 0 && !this.isClosed) {
      const batch = this.#outbox;
      this.#outbox = [];
      try {
        const res = await request(this.agent, this.jar, 'POST', `${this.#url}/xhr_send`, JSON.stringify(batch), this.o.timeoutMs);
        if (res.status !== 204) return this.finish(`xhr_send answered ${res.status}`);
      } catch (e) {
        return this.finish(`xhr_send failed: ${(e as Error).message}`);
      }
    }
    this.#sending = false;
  }

  close(): void {
    // sockjs-client sends nothing on close for xhr: the session times out on the server.
    this.finish('closed by client');
  }
}

export function openClient(transport: Transport, o: OpenOptions): Promise<LeanDdp> {
  const c = transport === 'ws' ? new SockjsWsDdp(o) : new SockjsXhrDdp(o);
  return c.open().catch((err: unknown) => {
    c.close();
    throw err;
  });
}

/**
 * Meteor's reconnect schedule (packages/retry/retry.js with socket-stream-client's settings):
 * the first two retries after 10 ms, then 1 s × 2.2^count with ±25 % fuzz, at most 5 minutes.
 */
export function meteorRetryDelayMs(count: number, random = Math.random): number {
  if (count < 2) return 10;
  const timeout = Math.min(5 * 60_000, 1000 * 2.2 ** count);
  return timeout * (random() * 0.5 + 0.75);
}
