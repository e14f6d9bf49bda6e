import assert from 'node:assert/strict';
import { MAX_URL_LENGTH, TRANSPORTS, classify, type ClassifyOptions, type RequestFacts, type Transport } from '../lib/balancer/classify';
import { prng } from './support/prng';

const ROOT: ClassifyOptions = { pathPrefix: '', dashboardPath: '/cluster' };
const APP: ClassifyOptions = { pathPrefix: '/app', dashboardPath: '/cluster' };
const HASH = '0123456789abcdef0123';
const OPENING: readonly Transport[] = ['websocket'];
const POLLING: readonly Transport[] = TRANSPORTS.filter((t) => !OPENING.includes(t));

const c = (url: string, opts: ClassifyOptions = ROOT): RequestFacts => classify(url, opts);

function assertMalformed(url: string, status: 400 | 404 | 414, opts: ClassifyOptions = ROOT): void {
  const f = c(url, opts);
  assert.equal(f.kind, 'malformed', `${JSON.stringify(url)} → ${JSON.stringify(f)}`);
  if (f.kind === 'malformed') {
    assert.equal(f.status, status, `${JSON.stringify(url)} → ${JSON.stringify(f)}`);
    assert.ok(f.reason.length > 0);
  }
}

function assertPage(url: string, opts: ClassifyOptions = ROOT): void {
  assert.deepEqual(c(url, opts), { kind: 'page' }, JSON.stringify(url));
}


describe('classify', () => {
  describe('sockjs paths at the root', () => {
    it('recognises /sockjs/info and keeps its query', () => {
      assert.deepEqual(c('/sockjs/info'), { kind: 'info', service: null, pinned: null, localUrl: '/sockjs/info' });
      assert.deepEqual(c('/sockjs/info?cb=abc123&t=1'), {
        kind: 'info', service: null, pinned: null, localUrl: '/sockjs/info?cb=abc123&t=1',
      });
    });

    for (const transport of TRANSPORTS) {
      it(`recognises the ${transport} transport, opens=${OPENING.includes(transport)}`, () => {
        assert.deepEqual(c(`/sockjs/123/abcdefgh/${transport}?x=1`), {
          kind: 'transport', service: null, pinned: null, serverId: '123', sessionId: 'abcdefgh',
          transport, opens: OPENING.includes(transport), via: null, localUrl: `/sockjs/123/abcdefgh/${transport}?x=1`,
        });
      });
    }

    // Only websocket: the streaming transports (xhr_streaming, eventsource, htmlfile) re-request
    // the same session URL whenever sockjs ends a response, so they poll an existing session too.
    it('marks exactly websocket as opening, and every other transport (streaming ones included) as not', () => {
      const opens = TRANSPORTS.filter((t) => {
        const f = c(`/sockjs/1/s/${t}`);
        return f.kind === 'transport' && f.opens;
      });
      assert.deepEqual(opens, ['websocket']);
      for (const t of ['xhr_streaming', 'eventsource', 'htmlfile', 'xhr', 'jsonp'] as const) assert.ok(!opens.includes(t), t);
      assert.deepEqual(TRANSPORTS.filter((t) => !opens.includes(t)).sort(), [...POLLING].sort());
    });

    it('treats the greeting (/sockjs, /sockjs/) and iframe pages as stateless sockjs resources', () => {
      for (const p of ['/sockjs/iframe.html', '/sockjs/iframe-1.6.1.min.js.html', '/sockjs/iframe-abc.html?v=1']) {
        assert.deepEqual(c(p), { kind: 'sockjs-other', service: null, pinned: null, localUrl: p });
      }
      assert.deepEqual(c('/sockjs'), { kind: 'sockjs-other', service: null, pinned: null, localUrl: '/sockjs' });
      assert.deepEqual(c('/sockjs/'), { kind: 'sockjs-other', service: null, pinned: null, localUrl: '/sockjs/' });
      assert.deepEqual(c('/sockjs?greeting=1'), { kind: 'sockjs-other', service: null, pinned: null, localUrl: '/sockjs?greeting=1' });
    });

    it('refuses iframe names sockjs-node would not serve', () => {
      assertMalformed('/sockjs/iframe.htm', 404);
      assertMalformed('/sockjs/iframe/x.html', 404);
      assertMalformed('/sockjs/IFRAME.html', 404);
    });

    it('maps /sockjs/websocket to the raw websocket endpoint', () => {
      for (const p of ['/sockjs/websocket', '/sockjs/websocket/']) {
        assert.deepEqual(c(p), { kind: 'raw-websocket', service: null, pinned: null, localUrl: '/websocket' });
      }
      assert.deepEqual(c('/sockjs/websocket?a=b'), { kind: 'raw-websocket', service: null, pinned: null, localUrl: '/websocket?a=b' });
    });
  });

  describe('raw /websocket', () => {
    it('recognises /websocket and /websocket/ with the query kept', () => {
      assert.deepEqual(c('/websocket'), { kind: 'raw-websocket', service: null, pinned: null, localUrl: '/websocket' });
      assert.deepEqual(c('/websocket/'), { kind: 'raw-websocket', service: null, pinned: null, localUrl: '/websocket' });
      assert.deepEqual(c('/websocket?v=1'), { kind: 'raw-websocket', service: null, pinned: null, localUrl: '/websocket?v=1' });
    });

    it('leaves anything longer than /websocket/ to the app', () => {
      assertPage('/websocketx');
      assertPage('/websocket//');
    });
  });

  describe('ROOT_URL_PATH_PREFIX', () => {
    it('understands every DDP form under /app and keeps the prefix in localUrl', () => {
      assert.deepEqual(c('/app/sockjs/info?t=1', APP), { kind: 'info', service: null, pinned: null, localUrl: '/app/sockjs/info?t=1' });
      assert.deepEqual(c('/app/sockjs/000/sess/xhr_send', APP), {
        kind: 'transport', service: null, pinned: null, serverId: '000', sessionId: 'sess', transport: 'xhr_send', opens: false, via: null,
        localUrl: '/app/sockjs/000/sess/xhr_send',
      });
      assert.deepEqual(c('/app/websocket', APP), { kind: 'raw-websocket', service: null, pinned: null, localUrl: '/app/websocket' });
      assert.deepEqual(c('/app/sockjs/websocket', APP), { kind: 'raw-websocket', service: null, pinned: null, localUrl: '/app/websocket' });
      assert.deepEqual(c(`/app/cluster-ddp/${HASH}/web/sockjs/info`, APP), {
        kind: 'info', service: 'web', pinned: HASH, localUrl: '/app/sockjs/info',
      });
      assert.deepEqual(c('/app/chat/websocket?q', APP), { kind: 'raw-websocket', service: 'chat', pinned: null, localUrl: '/app/websocket?q' });
      assert.deepEqual(c('/app/sockjs/iframe.html', APP), { kind: 'sockjs-other', service: null, pinned: null, localUrl: '/app/sockjs/iframe.html' });
    });

    it('puts the dashboard and health check under the prefix', () => {
      assert.deepEqual(c('/app/cluster', APP), { kind: 'dashboard', sub: '/' });
      assert.deepEqual(c('/app/cluster/health', APP), { kind: 'health' });
      assertPage('/cluster/health', APP);
      assertPage('/cluster', APP);
    });

    it('gives everything outside the prefix to the app, even sockjs-looking paths', () => {
      for (const p of ['/sockjs/info', '/websocket', '/sockjs/1/s/xhr', `/cluster-ddp/${HASH}/web/info`, '/apple/sockjs/info', '/ap', '/', '']) {
        assertPage(p, APP);
      }
      assertPage('/app', APP);
      assertPage('/app/', APP);
      assertPage('/app?x=1', APP);
    });

    it('uses the root when the prefix is empty', () => {
      assertPage('/', ROOT);
      assertPage('/index.html', ROOT);
      // Without a prefix, /app/... is just a service named "app".
      assert.deepEqual(c('/app/sockjs/info', ROOT), { kind: 'info', service: 'app', pinned: null, localUrl: '/sockjs/info' });
    });
  });

  describe('dashboard and health', () => {
    it('recognises the dashboard, its sub-paths and the health check', () => {
      assert.deepEqual(c('/cluster'), { kind: 'dashboard', sub: '/' });
      assert.deepEqual(c('/cluster/'), { kind: 'dashboard', sub: '/' });
      assert.deepEqual(c('/cluster/members.json?x=1'), { kind: 'dashboard', sub: '/members.json' });
      assert.deepEqual(c('/cluster/health'), { kind: 'health' });
      assert.deepEqual(c('/cluster/health?probe=1'), { kind: 'health' });
    });

    it('does not match paths that merely start with the dashboard name', () => {
      assertPage('/clusterx');
      assertPage('/clusters/health');
      assert.deepEqual(c('/cluster/health/x'), { kind: 'dashboard', sub: '/health/x' });
    });

    it('follows a custom dashboard path', () => {
      const opts = { pathPrefix: '', dashboardPath: '/_lb/status' };
      assert.deepEqual(c('/_lb/status/health', opts), { kind: 'health' });
      assert.deepEqual(c('/_lb/status', opts), { kind: 'dashboard', sub: '/' });
      assertPage('/cluster', opts);
    });
  });

  describe('pinned /cluster-ddp/<hash>/<service>/...', () => {
    it('recognises info with and without /sockjs after the service', () => {
      const want = { kind: 'info', service: 'web', pinned: HASH, localUrl: '/sockjs/info?t=9' };
      assert.deepEqual(c(`/cluster-ddp/${HASH}/web/sockjs/info?t=9`), want);
      assert.deepEqual(c(`/cluster-ddp/${HASH}/web/info?t=9`), want);
    });

    for (const transport of TRANSPORTS) {
      it(`recognises a pinned ${transport} transport with and without /sockjs`, () => {
        const want = {
          kind: 'transport', service: 'web', pinned: HASH, serverId: '042', sessionId: 'q1w2e3', transport,
          opens: OPENING.includes(transport), via: null, localUrl: `/sockjs/042/q1w2e3/${transport}?c=1`,
        };
        assert.deepEqual(c(`/cluster-ddp/${HASH}/web/sockjs/042/q1w2e3/${transport}?c=1`), want);
        assert.deepEqual(c(`/cluster-ddp/${HASH}/web/042/q1w2e3/${transport}?c=1`), want);
      });
    }

    it('recognises a pinned raw websocket in every spelling', () => {
      for (const tail of ['/websocket', '/websocket/', '/sockjs/websocket', '/sockjs/websocket/']) {
        assert.deepEqual(c(`/cluster-ddp/${HASH}/web${tail}?v=2`), { kind: 'raw-websocket', service: 'web', pinned: HASH, localUrl: '/websocket?v=2' });
      }
    });

    it('recognises pinned stateless sockjs resources', () => {
      assert.deepEqual(c(`/cluster-ddp/${HASH}/web/sockjs/iframe.html`), { kind: 'sockjs-other', service: 'web', pinned: HASH, localUrl: '/sockjs/iframe.html' });
      assert.deepEqual(c(`/cluster-ddp/${HASH}/web/iframe.html`), { kind: 'sockjs-other', service: 'web', pinned: HASH, localUrl: '/sockjs/iframe.html' });
      assert.deepEqual(c(`/cluster-ddp/${HASH}/web`), { kind: 'sockjs-other', service: 'web', pinned: HASH, localUrl: '/sockjs' });
      assert.deepEqual(c(`/cluster-ddp/${HASH}/web/sockjs`), { kind: 'sockjs-other', service: 'web', pinned: HASH, localUrl: '/sockjs' });
    });

    it('accepts hashes of 8 to 64 lowercase hex digits', () => {
      for (const h of ['abcdef01', 'f'.repeat(64), HASH]) {
        const f = c(`/cluster-ddp/${h}/web/info`);
        assert.equal(f.kind, 'info');
        if (f.kind === 'info') assert.equal(f.pinned, h);
      }
    });

    it('answers 404 for a bad hash', () => {
      for (const h of ['', 'abc', 'abcdef0', 'f'.repeat(65), 'ABCDEF0123', 'ghijklmnop', '0123456789abcdef012%', '..', '0123%2e%2e4567']) {
        assertMalformed(`/cluster-ddp/${h}/web/sockjs/info`, 404);
      }
      assertMalformed('/cluster-ddp/', 404);
      assertMalformed('/cluster-ddp//web/info', 404);
      assertMalformed(`/cluster-ddp/${HASH}\r\n/web/info`, 404);
    });

    it('answers 400 for a bad service name', () => {
      for (const s of ['', '-web', '_web', 'we.b', '..', 'web%2f', 'w b', 'x'.repeat(65), 'web\r\nX-Injected:1', 'wéb']) {
        assertMalformed(`/cluster-ddp/${HASH}/${s}/sockjs/info`, 400);
      }
      assertMalformed(`/cluster-ddp/${HASH}`, 400);
      assertMalformed(`/cluster-ddp/${HASH}/`, 400);
    });

    it('answers 404 for pinned paths that are not sockjs paths', () => {
      for (const tail of ['/nope', '/sockjs/info/', '/1/s/unknown', '/1/s', '/1/s/xhr/extra', '/sockjs/sockjs/info', '/1/../xhr', '/1//xhr']) {
        assertMalformed(`/cluster-ddp/${HASH}/web${tail}`, 404);
      }
    });

    it('leaves /cluster-ddp without a trailing slash to the app', () => {
      assertPage('/cluster-ddp');
    });
  });

  describe('public service /<service>/...', () => {
    it('recognises /<service>/sockjs/... for every form', () => {
      assert.deepEqual(c('/chat/sockjs/info?t=1'), { kind: 'info', service: 'chat', pinned: null, localUrl: '/sockjs/info?t=1' });
      assert.deepEqual(c('/chat/sockjs/7/abc/xhr'), {
        kind: 'transport', service: 'chat', pinned: null, serverId: '7', sessionId: 'abc', transport: 'xhr', opens: false, via: null,
        localUrl: '/sockjs/7/abc/xhr',
      });
      assert.deepEqual(c('/chat/sockjs/7/abc/websocket'), {
        kind: 'transport', service: 'chat', pinned: null, serverId: '7', sessionId: 'abc', transport: 'websocket', opens: true, via: null,
        localUrl: '/sockjs/7/abc/websocket',
      });
      assert.deepEqual(c('/chat/sockjs/websocket'), { kind: 'raw-websocket', service: 'chat', pinned: null, localUrl: '/websocket' });
      assert.deepEqual(c('/chat/sockjs/iframe.html'), { kind: 'sockjs-other', service: 'chat', pinned: null, localUrl: '/sockjs/iframe.html' });
      assert.deepEqual(c('/chat/sockjs'), { kind: 'sockjs-other', service: 'chat', pinned: null, localUrl: '/sockjs' });
    });

    it('recognises /<service>/websocket and /<service>/websocket/', () => {
      assert.deepEqual(c('/chat/websocket'), { kind: 'raw-websocket', service: 'chat', pinned: null, localUrl: '/websocket' });
      assert.deepEqual(c('/chat/websocket/?x'), { kind: 'raw-websocket', service: 'chat', pinned: null, localUrl: '/websocket?x' });
      assert.deepEqual(c('/my-svc_2/websocket'), { kind: 'raw-websocket', service: 'my-svc_2', pinned: null, localUrl: '/websocket' });
    });

    it('leaves other paths under a would-be service, and bad service names, to the app', () => {
      for (const p of ['/chat', '/chat/', '/chat/about', '/chat/sockjsx', '/chat/websocketx', '/-chat/sockjs/info', '/ch.at/websocket',
        '/../sockjs/info', '/./websocket', `/${'x'.repeat(65)}/websocket`, '/a/b/sockjs/info', '/ch%20at/websocket']) {
        assertPage(p);
      }
    });

    it('answers 404 for a bad sockjs path under a valid service', () => {
      assertMalformed('/chat/sockjs/1/s/bogus', 404);
      assertMalformed('/chat/sockjs/info/x', 404);
    });
  });

  describe('hostile and malformed input', () => {
    it('answers 414 above MAX_URL_LENGTH, and accepts exactly MAX_URL_LENGTH', () => {
      const base = '/sockjs/info?';
      const exact = base + 'x'.repeat(MAX_URL_LENGTH - base.length);
      assert.equal(exact.length, MAX_URL_LENGTH);
      assert.equal(c(exact).kind, 'info');
      assertMalformed(exact + 'x', 414);
      assertMalformed('/' + 'a'.repeat(100_000), 414);
      assertMalformed('/app/' + 'a'.repeat(MAX_URL_LENGTH), 414, APP);
    });

    it('answers 404 for an unknown transport', () => {
      for (const t of ['ws', 'XHR', 'xhr-send', 'websockets', 'eventsource ', '', 'info']) {
        assertMalformed(`/sockjs/1/abc/${t}`, 404);
      }
    });

    it('answers 404 for too many or too few segments', () => {
      for (const p of ['/sockjs/1', '/sockjs/1/abc', '/sockjs/1/abc/xhr/', '/sockjs/1/abc/xhr/more', '/sockjs/a/b/c/d/e', '/sockjs/info/', '/sockjs/info/x']) {
        assertMalformed(p, 404);
      }
    });

    it('answers 404 for dots in server or session ids', () => {
      for (const p of ['/sockjs/../abc/xhr', '/sockjs/1/../xhr', '/sockjs/./abc/xhr', '/sockjs/1/a.b/xhr', '/sockjs/1.2/abc/xhr', '/sockjs/../../etc/passwd']) {
        assertMalformed(p, 404);
      }
    });

    it('answers 404 for empty ids and doubled slashes inside sockjs paths', () => {
      for (const p of ['/sockjs//abc/xhr', '/sockjs/1//xhr', '/sockjs///xhr', '/sockjs//info', '/sockjs/1/abc//xhr']) {
        assertMalformed(p, 404);
      }
    });

    it('gives a doubled leading slash to the app rather than guessing', () => {
      assertPage('//sockjs/info');
      assertPage('//websocket');
      assertPage('//cluster/health');
    });

    it('answers 404 for control characters, spaces and raw CRLF in ids', () => {
      for (const bad of ['a\r\nb', 'a\rb', 'a\nb', 'a\x00b', 'a\tb', 'a b', 'a\x7fb', '\x1f']) {
        assertMalformed(`/sockjs/1/${bad}/xhr`, 404);
        assertMalformed(`/sockjs/${bad}/abc/xhr`, 404);
      }
    });

    it('keeps percent-encoded CRLF verbatim (never decoded) in ids and localUrl', () => {
      const f = c('/sockjs/1/ab%0d%0aSet-Cookie:x/xhr');
      assert.equal(f.kind, 'transport');
      if (f.kind === 'transport') {
        assert.equal(f.sessionId, 'ab%0d%0aSet-Cookie:x');
        assert.equal(f.localUrl, '/sockjs/1/ab%0d%0aSet-Cookie:x/xhr');
        assert.doesNotMatch(f.localUrl, /[\r\n]/);
      }
      assertPage('/sockjs%2finfo');
      assertPage('/%2e%2e/sockjs/info');
    });

    it('bounds id lengths: server 64, session 128', () => {
      assert.equal(c(`/sockjs/${'s'.repeat(64)}/abc/xhr`).kind, 'transport');
      assertMalformed(`/sockjs/${'s'.repeat(65)}/abc/xhr`, 404);
      assert.equal(c(`/sockjs/1/${'s'.repeat(128)}/xhr`).kind, 'transport');
      assertMalformed(`/sockjs/1/${'s'.repeat(129)}/xhr`, 404);
    });

    it('gives non-path request targets to the app', () => {
      for (const p of ['', '*', 'sockjs/info', 'http://evil.example/sockjs/info', '?/sockjs/info']) {
        assertPage(p);
      }
    });

    it('splits the query at the first ? and keeps it byte for byte', () => {
      const f = c('/sockjs/info?a=/sockjs/1/x/xhr?b=%0d%0a&c=..');
      assert.deepEqual(f, { kind: 'info', service: null, pinned: null, localUrl: '/sockjs/info?a=/sockjs/1/x/xhr?b=%0d%0a&c=..' });
      assert.deepEqual(c('/sockjs/info?'), { kind: 'info', service: null, pinned: null, localUrl: '/sockjs/info?' });
    });
  });

  it('refuses URLs the WHATWG parser rejects (a protocol-relative path with a bad host) with 400', () => {
    assertMalformed('//kBy^f8i%5opZ/u', 400);
    assertMalformed('/\\}>)f+Rnb5', 400);
    assertPage('//example.com/ok');
  });

  describe('property: random paths', () => {
    const SERVER_ID = /^[^/.\x00-\x20\x7f]{1,64}$/;
    const SESSION_ID = /^[^/.\x00-\x20\x7f]{1,128}$/;
    const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
    const HEX = /^[0-9a-f]{8,64}$/;
    const KINDS = new Set(['info', 'transport', 'raw-websocket', 'sockjs-other', 'dashboard', 'health', 'page', 'malformed']);

    const segments = [
      'sockjs', 'websocket', 'cluster-ddp', 'info', 'iframe.html', 'iframe-1.2.html', 'cluster', 'health', 'app', 'chat', 'web',
      HASH, 'abcdef01', 'ABCDEF01', '000', '123', 'a1b2c3', '..', '.', '', '%0d%0a', '\r\n', '\x00', ' ', '%2e%2e', '%2f', 'é',
      ...TRANSPORTS, 'XHR', 'ws', '-x', 'x'.repeat(70), 's'.repeat(130),
    ];

    function randomPath(rnd: () => number): string {
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
      const randChar = (): string => String.fromCharCode(Math.floor(rnd() * 0x100));
      const junk = (): string => Array.from({ length: 1 + Math.floor(rnd() * 6) }, randChar).join('');
      const segment = (): string => {
        const r = rnd();
        if (r < 0.8) return pick(segments);
        if (r < 0.97) return junk();
        return 'z'.repeat(Math.floor(rnd() * 10_000));
      };
      let parts: string[];
      if (rnd() < 0.6) {
        // Mostly well-formed DDP paths, then a few random mutations.
        const head = pick([[], ['app'], ['chat'], ['cluster-ddp', HASH, 'web'], ['cluster-ddp', HASH, 'web', 'sockjs'], ['app', 'cluster-ddp', HASH, 'chat']]);
        const tail = pick([
          ['sockjs', 'info'], ['sockjs', pick(['1', '000', 'abc']), pick(['s1', 'a1b2c3', 'zz']), pick(TRANSPORTS)], ['websocket'],
          ['sockjs', 'websocket'], ['sockjs', 'iframe.html'], ['sockjs'], ['info'], [pick(['1', '000']), 'sess', pick(TRANSPORTS)],
        ]);
        parts = [...head, ...tail];
        const mutations = Math.floor(rnd() * 3);
        for (let m = 0; m < mutations; m++) {
          const at = Math.floor(rnd() * (parts.length + 1));
          const r = rnd();
          if (r < 0.4) parts.splice(at, 1, segment());
          else if (r < 0.7) parts.splice(at, 0, segment());
          else parts.splice(at, 1);
        }
      } else {
        parts = Array.from({ length: Math.floor(rnd() * 8) }, segment);
      }
      let path = (rnd() < 0.97 ? '/' : '') + parts.join('/');
      if (rnd() < 0.1) path += '/';
      if (rnd() < 0.4) path += '?' + Array.from({ length: Math.floor(rnd() * 12) }, randChar).join('');
      return path;
    }

    function check(url: string, opts: ClassifyOptions): void {
      let f: RequestFacts;
      try {
        f = classify(url, opts);
      } catch (err) {
        assert.fail(`classify threw for ${JSON.stringify(url)}: ${String(err)}`);
      }
      const why = `${JSON.stringify(url)} (prefix ${JSON.stringify(opts.pathPrefix)}) → ${JSON.stringify(f)}`;
      assert.ok(KINDS.has(f.kind), why);
      assert.deepEqual(classify(url, opts), f, `not deterministic: ${why}`);
      if (url.length > MAX_URL_LENGTH) assert.ok(f.kind === 'malformed' && f.status === 414, why);

      const q = url.indexOf('?');
      const path = q === -1 ? url : url.slice(0, q);
      const query = q === -1 ? '' : url.slice(q);
      const prefix = opts.pathPrefix;
      const unparseable = f.kind === 'malformed' && f.reason === 'invalid URL';
      if (unparseable) assert.ok(/^\/[/\\]/.test(path), `only protocol-relative-looking URLs are refused as unparseable: ${why}`);
      if (url.length <= MAX_URL_LENGTH && prefix !== '' && path !== prefix && !path.startsWith(prefix + '/') && !unparseable) {
        assert.equal(f.kind, 'page', `outside the prefix: ${why}`);
      }

      switch (f.kind) {
        case 'malformed':
          assert.ok([400, 404, 414].includes(f.status), why);
          assert.ok(f.reason.length > 0, why);
          if (f.status === 414) assert.ok(url.length > MAX_URL_LENGTH, why);
          break;
        case 'dashboard':
          assert.ok(f.sub.startsWith('/'), why);
          break;
        case 'health':
        case 'page':
        case 'carry':
          break;
        default: {
          assert.ok(f.localUrl.startsWith(prefix + '/'), why);
          assert.ok(f.localUrl.endsWith(query), `query not kept: ${why}`);
          const localPath = f.localUrl.slice(0, f.localUrl.length - query.length);
          assert.doesNotMatch(localPath, /[\x00-\x20\x7f]/, `control character in localUrl path: ${why}`);
          assert.ok(!localPath.includes('//'), why);
          assert.ok(!localPath.split('/').some((s) => s === '..' || s === '.'), why);
          assert.ok(f.service === null || NAME.test(f.service), why);
          assert.ok(f.pinned === null || HEX.test(f.pinned), why);
          if (f.pinned !== null) assert.notEqual(f.service, null, why);
          if (f.kind === 'transport') {
            assert.match(f.serverId, SERVER_ID, why);
            assert.match(f.sessionId, SESSION_ID, why);
            assert.ok(TRANSPORTS.includes(f.transport), why);
            assert.equal(f.opens, OPENING.includes(f.transport), why);
            assert.equal(localPath, `${prefix}/sockjs/${f.serverId}/${f.sessionId}/${f.transport}`, why);
          }
          if (f.kind === 'raw-websocket') assert.equal(localPath, `${prefix}/websocket`, why);
          if (f.kind === 'info') assert.equal(localPath, `${prefix}/sockjs/info`, why);
        }
      }
    }

    it('never throws and always returns well-formed facts for 5000 random paths per prefix', () => {
      const counts = new Map<string, number>();
      for (const opts of [ROOT, APP]) {
        const rnd = prng(opts === ROOT ? 0xc0ffee : 0xbadf00d);
        for (let i = 0; i < 5000; i++) {
          const url = randomPath(rnd);
          check(url, opts);
          const k = classify(url, opts).kind;
          counts.set(k, (counts.get(k) ?? 0) + 1);
        }
      }
      // The generator must actually reach the interesting branches.
      for (const k of ['info', 'transport', 'raw-websocket', 'sockjs-other', 'page', 'malformed']) {
        assert.ok((counts.get(k) ?? 0) > 10, `only ${counts.get(k) ?? 0} ${k} results: ${JSON.stringify([...counts])}`);
      }
    });

    it('never throws on random byte strings', () => {
      const rnd = prng(42);
      for (let i = 0; i < 3000; i++) {
        const len = Math.floor(rnd() * 64);
        const url = Array.from({ length: len }, () => String.fromCharCode(Math.floor(rnd() * 0x100))).join('');
        check(url, ROOT);
        check('/' + url, APP);
      }
    });
  });
});
