/**
 * Reads a V8 .cpuprofile (node --cpu-prof) and says where the time went: self time by function,
 * inclusive time of ddp-cluster's own functions, and a breakdown by origin (Node core module,
 * npm package, lib/, the fixture app, GC).
 */
import fs from 'node:fs';
import path from 'node:path';
import { COMPILED_DIR } from './compiled';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

function where(url: string, repo: string): string {
  if (url === '') return '';
  let u = url.replace(/^file:\/\//, '');
  // The backends run compiled (compiled.ts): name their files as in the repo.
  if (u.startsWith(COMPILED_DIR)) u = path.join(repo, path.relative(COMPILED_DIR, u)).replace(/\.js$/, '.ts');
  if (u.startsWith(repo)) u = path.relative(repo, u);
  return u;
}

/** Origin bucket of a frame. */
function origin(frame: CallFrame, repo: string): string {
  const { url, functionName } = frame;
  if (url === '') return functionName.startsWith('(') ? functionName : '(native)';
  if (url.startsWith('node:')) {
    const m = /^node:(?:internal\/)?([a-z_]+(?:\/[a-z_]+)?)/.exec(url);
    return `node:${m?.[1] ?? url.slice(5)}`;
  }
  const u = where(url, repo);
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(u);
  if (nm) return `npm:${nm[1]}`;
  if (u.startsWith('lib/')) return `ddp-cluster ${u.split('/').slice(0, 3).join('/')}`;
  if (u.startsWith('examples/node-ddp-app/')) return 'reference app (examples/node-ddp-app)';
  return u;
}

const pct = (n: number, total: number): string => `${((100 * n) / total).toFixed(1).padStart(5)}%`;

export function analyzeProfile(file: string, repo: string, top = 30): string {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of prof.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  // Files of this repo run compiled by tsc (compiled.ts): their line numbers are the generated
  // code's, so only the file is shown for them.
  const key = (f: CallFrame): string => {
    const w = where(f.url, repo);
    const line = f.url && !f.url.startsWith(`file://${repo}`) || w.includes('node_modules/') ? `:${f.lineNumber + 1}` : '';
    return `${f.functionName || '(anonymous)'}  ${w}${line}`;
  };
  const self = new Map<string, number>();
  const incl = new Map<string, number>();
  const origins = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    const id = prof.samples[i] as number;
    const dt = Math.max(0, prof.timeDeltas[i] ?? 0);
    const node = byId.get(id);
    if (!node) continue;
    total += dt;
    if (node.callFrame.functionName === '(idle)') {
      idle += dt;
      continue;
    }
    const k = key(node.callFrame);
    self.set(k, (self.get(k) ?? 0) + dt);
    const o = origin(node.callFrame, repo);
    origins.set(o, (origins.get(o) ?? 0) + dt);
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const n = byId.get(cur);
      if (!n) break;
      const kk = key(n.callFrame);
      if (seen.has(kk)) continue;
      seen.add(kk);
      incl.set(kk, (incl.get(kk) ?? 0) + dt);
    }
  }
  const busy = total - idle;
  const lines: string[] = [];
  lines.push(`profile ${path.basename(file)}: ${(total / 1e6).toFixed(1)} s sampled, busy ${(busy / 1e6).toFixed(1)} s (${pct(busy, total).trim()}); percentages below are of busy time`);
  lines.push('');
  lines.push('by origin (self time):');
  for (const [o, t] of [...origins].sort((a, b) => b[1] - a[1]).slice(0, 20)) lines.push(`  ${pct(t, busy)}  ${o}`);
  lines.push('');
  lines.push(`top ${top} functions by self time:`);
  for (const [k, t] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) lines.push(`  ${pct(t, busy)}  ${k}`);
  lines.push('');
  lines.push('ddp-cluster and http-proxy-3 functions by inclusive time:');
  const own = [...incl].filter(([k]) => /\s(lib\/|.*node_modules\/http-proxy-3\/)/.test(k) || k.includes(' lib/'));
  for (const [k, t] of own.sort((a, b) => b[1] - a[1]).slice(0, 25)) lines.push(`  ${pct(t, busy)}  ${k}`);
  return lines.join('\n') + '\n';
}
