/** CPU time and RSS of processes, from /proc (Linux only). */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';

let ticks = 0;
function clockTicks(): number {
  if (ticks > 0) return ticks;
  try {
    ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    ticks = 100;
  }
  return ticks;
}

/** user + system CPU seconds of `pid` (0 if it's gone). */
export function cpuSeconds(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / clockTicks();
  } catch {
    return 0;
  }
}

/** VmRSS of `pid` in bytes (0 if it's gone). */
export function rssBytes(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

export interface Usage {
  cpu: number;
  rss: number;
}

export function usage(pids: readonly number[]): Usage {
  let cpu = 0;
  let rss = 0;
  for (const p of pids) {
    cpu += cpuSeconds(p);
    rss += rssBytes(p);
  }
  return { cpu, rss };
}

/** What this machine is, for the report. */
export function machine(): { cpu: string; cores: number; memGiB: number; kernel: string; node: string } {
  let cpu = 'unknown';
  let cores = 0;
  try {
    const info = fs.readFileSync('/proc/cpuinfo', 'utf8');
    cpu = /^model name\s*:\s*(.+)$/m.exec(info)?.[1]?.trim() ?? cpu;
    cores = (info.match(/^processor\s*:/gm) ?? []).length;
  } catch {
    // not Linux
  }
  let memGiB = 0;
  try {
    const kb = Number(/^MemTotal:\s+(\d+)/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
    memGiB = Math.round(kb / 1024 / 1024);
  } catch {
    // not Linux
  }
  let kernel = '';
  try {
    kernel = fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  } catch {
    // not Linux
  }
  return { cpu, cores, memGiB, kernel, node: process.version };
}

/** Machine-wide busy and total CPU seconds since boot (all cores), from /proc/stat. */
export function systemCpu(): { busy: number; total: number } {
  try {
    const line = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
    const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    return { busy: (total - idle) / clockTicks(), total: total / clockTicks() };
  } catch {
    return { busy: 0, total: 0 };
  }
}

/**
 * Other tenants of this machine, in cores, over `ms`: machine-wide busy CPU not used by `pids` or
 * this process (the load generator's own processes belong in `pids`).
 */
export async function foreignCores(pids: () => number[], ms = 1000): Promise<number> {
  const s0 = systemCpu();
  const o0 = usage(pids()).cpu;
  const m0 = process.cpuUsage();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const me = process.cpuUsage(m0);
  const ours = usage(pids()).cpu - o0 + (me.user + me.system) / 1e6;
  return Math.max(0, (systemCpu().busy - s0.busy - ours) / (ms / 1000));
}
