/**
 * Turns the samples of a run into bench/results/latest.json (everything), latest.md (medians over
 * the repeats and ratios to the direct setup) and latest.png (vega-lite → SVG → PNG with resvg).
 */
import fs from 'node:fs';
import path from 'node:path';
import { SETUP_LABELS, type SetupName } from './setups';

export interface Sample {
  setup: SetupName;
  round: number;
  metric: string;
  value: number;
  [extra: string]: unknown;
}

export interface RunRecord {
  startedAt: string;
  durationS: number;
  quick: boolean;
  command: string;
  git: { commit: string; dirty: boolean };
  machine: { cpu: string; cores: number; memGiB: number; kernel: string; node: string };
  discovery: string;
  proxies: Record<string, string>;
  params: unknown;
  setups: SetupName[];
  phases: string[];
  samples: Sample[];
  /** Phases that failed (the run went on without them). */
  failures?: string[];
}

export interface Summary {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export function summarize(samples: readonly Sample[]): Map<string, Map<SetupName, Summary>> {
  const groups = new Map<string, Map<SetupName, number[]>>();
  for (const s of samples) {
    const g = groups.get(s.metric) ?? new Map<SetupName, number[]>();
    const v = g.get(s.setup) ?? [];
    v.push(s.value);
    g.set(s.setup, v);
    groups.set(s.metric, g);
  }
  const out = new Map<string, Map<SetupName, Summary>>();
  for (const [metric, g] of groups) {
    const m = new Map<SetupName, Summary>();
    for (const [setup, v] of g) m.set(setup, { median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length });
    out.set(metric, m);
  }
  return out;
}

interface Row {
  readonly metric: string;
  readonly label: string;
  readonly digits: number;
  /** Show the ratio to the direct setup. */
  readonly ratio?: boolean;
}

function rows(run: RunRecord): Row[] {
  const p = run.params as {
    latency: { ws: { rate: number; sessions: number }; xhr: { rate: number; sessions: number } };
    throughput: { ws: { sessions: number; depth: number }; xhr: { sessions: number; depth: number } };
    setup: { concurrency: number };
    memory: { sessions: number };
    balance: { sessions: number };
    failover: { sessions: number };
    rebalance?: { target: number; windowMs: number; rate: number; steadyMs: number };
  };
  const lw = `${p.latency.ws.rate}/s over ${p.latency.ws.sessions} sessions`;
  const lx = `${p.latency.xhr.rate}/s over ${p.latency.xhr.sessions} sessions`;
  return [
    { metric: 'lat_ws_p50', label: `DDP over websocket: method RTT p50, ms (${lw})`, digits: 2, ratio: true },
    { metric: 'lat_ws_p90', label: 'DDP over websocket: method RTT p90, ms', digits: 2, ratio: true },
    { metric: 'lat_ws_p99', label: 'DDP over websocket: method RTT p99, ms', digits: 2, ratio: true },
    { metric: 'lat_xhr_p50', label: `DDP over xhr-polling: method RTT p50, ms (${lx})`, digits: 2, ratio: true },
    { metric: 'lat_xhr_p90', label: 'DDP over xhr-polling: method RTT p90, ms', digits: 2, ratio: true },
    { metric: 'lat_xhr_p99', label: 'DDP over xhr-polling: method RTT p99, ms', digits: 2, ratio: true },
    { metric: 'tput_ws', label: `Max throughput, websocket: calls/s (${p.throughput.ws.sessions} sessions × ${p.throughput.ws.depth} in flight)`, digits: 0, ratio: true },
    { metric: 'tput_xhr', label: `Max throughput, xhr-polling: calls/s (${p.throughput.xhr.sessions} sessions × ${p.throughput.xhr.depth} in flight)`, digits: 0, ratio: true },
    { metric: 'setup_per_s', label: `Session set-up rate (info + upgrade + DDP connect), /s (${p.setup.concurrency} concurrent)`, digits: 0, ratio: true },
    { metric: 'setup_p50', label: 'Session set-up time p50, ms', digits: 1, ratio: true },
    { metric: 'cpu_ws_server_per10k', label: 'CPU s per 10k websocket calls, all server processes', digits: 2, ratio: true },
    { metric: 'cpu_ws_proxy_per10k', label: 'CPU s per 10k websocket calls, proxy process only', digits: 2 },
    { metric: 'cpu_xhr_server_per10k', label: 'CPU s per 10k xhr calls, all server processes', digits: 2, ratio: true },
    { metric: 'cpu_xhr_proxy_per10k', label: 'CPU s per 10k xhr calls, proxy process only', digits: 2 },
    { metric: 'cpu_setup_server_per1k', label: 'CPU s per 1k session set-ups, all server processes', digits: 2, ratio: true },
    { metric: 'cpu_setup_proxy_per1k', label: 'CPU s per 1k session set-ups, proxy process only', digits: 2 },
    { metric: 'mem_sessions', label: `Idle websocket sessions held (asked: ${p.memory.sessions})`, digits: 0 },
    { metric: 'mem_server_kib_per_session', label: 'RSS per idle session, all server processes, KiB', digits: 1, ratio: true },
    { metric: 'mem_proxy_kib_per_session', label: 'RSS per idle session, proxy process only, KiB', digits: 1 },
    { metric: 'mem_proxy_rss_mib', label: 'Proxy RSS with those sessions, MiB', digits: 1 },
    { metric: 'balance_max_over_mean_load', label: `Balance: max/mean load after ${p.balance.sessions} sessions, c at half capacity (1.00 ideal)`, digits: 2 },
    { metric: 'balance_max_over_mean_sessions', label: 'Balance: max/mean sessions per instance (1.20 ideal with c at half)', digits: 2 },
    { metric: 'fo_clients_on_dead', label: `Failover (kill -9 of c, ${p.failover.sessions} clients): clients on c`, digits: 0 },
    { metric: 'fo_detect_ms', label: 'Failover: c marked down after, ms', digits: 0 },
    { metric: 'fo_last_routed_ms', label: 'Failover: last connection attempt routed to c, ms after kill', digits: 0 },
    { metric: 'fo_routing_errors', label: 'Failover: connection attempts routed to c after kill', digits: 0 },
    { metric: 'fo_new_failed', label: 'Failover: new sessions that failed (client-visible)', digits: 0 },
    { metric: 'fo_reconnect_p50_ms', label: "Failover: c's clients reconnected elsewhere, p50 ms", digits: 0 },
    { metric: 'fo_reconnect_all_ms', label: "Failover: all of c's clients reconnected, ms", digits: 0 },
    { metric: 'rb_sessions', label: 'Rebalance (a 4th member joins 3): sessions held', digits: 0 },
    { metric: 'rb_balanced_ms', label: `Rebalance: max/mean sessions ≤ ${p.rebalance?.target ?? 1.15} after, ms`, digits: 0 },
    { metric: 'rb_ratio_at_window', label: `Rebalance: max/mean sessions ${(p.rebalance?.windowMs ?? 60_000) / 1000} s after the join`, digits: 2 },
    { metric: 'rb_max_close_rate', label: `Rebalance: highest close rate of a member, per s (limit ${p.rebalance?.rate ?? '?'})`, digits: 1 },
    { metric: 'rb_max_close_rate_5s', label: 'Rebalance: highest close rate of a member over 5 s, per s', digits: 1 },
    { metric: 'rb_moved', label: 'Rebalance: clients moved', digits: 0 },
    { metric: 'rb_max_disconnects_per_moved', label: 'Rebalance: most disconnects of a moved client', digits: 0 },
    { metric: 'rb_failed_calls', label: 'Rebalance: failed method calls (retrying clients)', digits: 0 },
    { metric: 'rb_steady_moved', label: `Rebalance: sessions moved in the balanced steady state (${(p.rebalance?.steadyMs ?? 0) / 1000} s)`, digits: 0 },
    { metric: 'hops_ws', label: 'ddp-cluster: share of websocket sessions proxied (hop)', digits: 2 },
    { metric: 'burst_hops_ws', label: 'ddp-cluster cluster mode: share of websocket sessions proxied, per burst of 60 from idle (median of all bursts)', digits: 2 },
    { metric: 'hops_xhr', label: 'ddp-cluster: share of xhr requests proxied (hop)', digits: 2 },
    { metric: 'hops_tput_ws', label: 'ddp-cluster: share of websocket sessions proxied, throughput phase (90 sessions)', digits: 2 },
    { metric: 'hops_tput_xhr', label: 'ddp-cluster: share of xhr requests proxied, throughput phase', digits: 2 },
  ];
}

function fmt(n: number, digits: number): string {
  if (!Number.isFinite(n)) return '–';
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function markdown(run: RunRecord): string {
  const sum = summarize(run.samples);
  const setups = run.setups;
  const head = `| Metric (median of repeats) | ${setups.map((s) => SETUP_LABELS[s]).join(' | ')} |`;
  const sep = `|---|${setups.map(() => '---:').join('|')}|`;
  const lines = [head, sep];
  for (const r of rows(run)) {
    const m = sum.get(r.metric);
    if (!m) continue;
    const direct = m.get('direct')?.median;
    const cells = setups.map((s) => {
      const v = m.get(s);
      if (!v) return '–';
      let cell = fmt(v.median, r.digits);
      if (r.ratio && direct !== undefined && s !== 'direct' && direct > 0) cell += ` (×${(v.median / direct).toFixed(2)})`;
      return cell;
    });
    lines.push(`| ${r.label} | ${cells.join(' | ')} |`);
  }
  const m = run.machine;
  return [
    `Measured ${run.startedAt.slice(0, 16).replace('T', ' ')} UTC with \`${run.command}\` (${run.durationS} s, ${run.quick ? 'quick' : /--(setups|phases|repeats)\b/.test(run.command) ? 'partial' : 'full'} run; commit ${run.git.commit}${run.git.dirty ? ' with uncommitted lib/ changes' : ''}).`,
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.memGiB} GiB, Linux ${m.kernel}, Node ${m.node}; nginx ${run.proxies.nginx ?? '–'}, HAProxy ${run.proxies.haproxy ?? '–'}; discovery on ${run.discovery}.`,
    '(×n) = ratio to the direct setup. Every process (3 instances, proxy, load generator, MongoDB) shares the same 2 cores.',
    '',
    ...lines,
    '',
    ...(run.failures?.length ? ['Failed phases (no figures above for them):', ...run.failures.map((f) => `- ${f}`), ''] : []),
  ].join('\n');
}

/* ------------------------------------------------------------------------------------------ */
/* plot                                                                                        */

interface VegaView {
  toSVG(scale?: number): Promise<string>;
  finalize(): void;
}
interface VegaModule {
  parse(spec: unknown): unknown;
  View: new (runtime: unknown, opts: { renderer: string }) => VegaView;
}
interface VegaLiteModule {
  compile(spec: unknown): { spec: unknown };
}
interface ResvgModule {
  Resvg: new (svg: string, opts: unknown) => { render(): { asPng(): Buffer } };
}

/** ESM-only packages, loaded at run time (this project is CommonJS). */
const importEsm = (name: string): Promise<unknown> => import(name);

const PLOTTED: ReadonlyArray<{ metric: string; title: string }> = [
  { metric: 'lat_ws_p50', title: 'ws RTT p50 (ms) ↓' },
  { metric: 'lat_ws_p99', title: 'ws RTT p99 (ms) ↓' },
  { metric: 'lat_xhr_p99', title: 'xhr-polling RTT p99 (ms) ↓' },
  { metric: 'tput_ws', title: 'ws max throughput (calls/s) ↑' },
  { metric: 'tput_xhr', title: 'xhr max throughput (calls/s) ↑' },
  { metric: 'setup_per_s', title: 'session set-ups per s ↑' },
  { metric: 'mem_server_kib_per_session', title: 'server RSS per idle session (KiB) ↓' },
  { metric: 'balance_max_over_mean_load', title: 'max/mean load, c at half capacity ↓' },
  { metric: 'fo_reconnect_all_ms', title: 'kill -9: all clients back (ms) ↓' },
];

export function plotSpec(run: RunRecord): Record<string, unknown> {
  const sum = summarize(run.samples);
  const values: Array<Record<string, unknown>> = [];
  for (const p of PLOTTED) {
    const m = sum.get(p.metric);
    if (!m) continue;
    for (const s of run.setups) {
      const v = m.get(s);
      if (v) values.push({ panel: p.title, setup: SETUP_LABELS[s], median: v.median, min: v.min, max: v.max });
    }
  }
  const order = run.setups.map((s) => SETUP_LABELS[s]);
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: `ddp-cluster vs direct, nginx, HAProxy — ${run.machine.cores} cores, ${run.startedAt.slice(0, 10)}`, fontSize: 15 },
    data: { values },
    facet: { field: 'panel', type: 'nominal', sort: PLOTTED.map((p) => p.title), title: null, header: { labelFontSize: 12, labelFontWeight: 'bold' } },
    columns: 3,
    spec: {
      width: 230,
      height: 150,
      layer: [
        {
          mark: { type: 'bar' },
          encoding: {
            x: { field: 'setup', type: 'nominal', sort: order, axis: null },
            y: { field: 'median', type: 'quantitative', title: null },
            color: { field: 'setup', type: 'nominal', sort: order, title: 'setup', scale: { scheme: 'tableau10' } },
          },
        },
        {
          mark: { type: 'rule', color: '#333' },
          encoding: {
            x: { field: 'setup', type: 'nominal', sort: order },
            y: { field: 'min', type: 'quantitative' },
            y2: { field: 'max' },
          },
        },
        {
          mark: { type: 'text', dy: -6, fontSize: 9 },
          encoding: {
            x: { field: 'setup', type: 'nominal', sort: order },
            y: { field: 'median', type: 'quantitative' },
            text: { field: 'median', type: 'quantitative', format: ',.3~r' },
          },
        },
      ],
    },
    resolve: { scale: { y: 'independent' } },
    config: { legend: { orient: 'bottom', columns: 3, labelFontSize: 12, titleFontSize: 12, labelLimit: 320, columnPadding: 24 }, font: 'DejaVu Sans' },
  };
}

export async function renderPng(spec: Record<string, unknown>): Promise<Buffer> {
  const vega = (await importEsm('vega')) as VegaModule;
  const vl = (await importEsm('vega-lite')) as VegaLiteModule;
  const { Resvg } = (await importEsm('@resvg/resvg-js')) as ResvgModule;
  const view = new vega.View(vega.parse(vl.compile(spec).spec), { renderer: 'none' });
  try {
    const svg = await view.toSVG(1.5);
    return new Resvg(svg, { background: 'white', font: { loadSystemFonts: true, defaultFontFamily: 'DejaVu Sans' } }).render().asPng();
  } finally {
    view.finalize();
  }
}

export async function writeReport(run: RunRecord, outDir: string): Promise<void> {
  fs.mkdirSync(outDir, { recursive: true });
  const summary: Record<string, Record<string, Summary>> = {};
  for (const [metric, m] of summarize(run.samples)) summary[metric] = Object.fromEntries(m);
  fs.writeFileSync(path.join(outDir, 'latest.json'), JSON.stringify({ ...run, summary }, null, 1) + '\n');
  fs.writeFileSync(path.join(outDir, 'latest.md'), markdown(run));
  const spec = plotSpec(run);
  fs.writeFileSync(path.join(outDir, 'latest.vl.json'), JSON.stringify(spec, null, 1) + '\n');
  fs.writeFileSync(path.join(outDir, 'latest.png'), await renderPng(spec));
}

/** `tsx bench/report.ts [dir]`: re-render latest.md and latest.png from latest.json. */
if (require.main === module) {
  const dir = path.resolve(process.argv[2] ?? path.join(__dirname, 'results'));
  const run = JSON.parse(fs.readFileSync(path.join(dir, 'latest.json'), 'utf8')) as RunRecord;
  writeReport(run, dir).then(() => process.stdout.write(`re-rendered ${dir}/latest.{md,png}\n`), (err: unknown) => {
    process.stderr.write(`${String(err)}\n`);
    process.exit(1);
  });
}
