import assert from 'node:assert/strict';
import { createLogger } from '../lib/log';

describe('logger', () => {
  const make = (o: { onceWindowMs?: number; onceMaxKeys?: number } = {}) => {
    const lines: Record<string, unknown>[] = [];
    let t = 0;
    const logger = createLogger('debug', {}, (line) => void lines.push(JSON.parse(line) as Record<string, unknown>), { ...o, now: () => t });
    return { logger, lines, at: (ms: number) => void (t = ms) };
  };

  it('"once" logs a key once per time window, then again with how many were left out', () => {
    const { logger, lines, at } = make({ onceWindowMs: 1000 });
    for (let i = 0; i < 5; i++) logger.once('warn', 'peer:b:ECONNREFUSED', 'balancer.proxy_error', { n: i });
    assert.deepEqual(lines.map((l) => l.n), [0]);
    at(999);
    logger.once('warn', 'peer:b:ECONNREFUSED', 'balancer.proxy_error', { n: 5 });
    assert.equal(lines.length, 1, 'still in the window');
    // The peer's second outage, later: logged again.
    at(1000);
    logger.once('warn', 'peer:b:ECONNREFUSED', 'balancer.proxy_error', { n: 6 });
    assert.deepEqual(lines.map((l) => [l.n, l.suppressed]), [[0, undefined], [6, 5]]);
    logger.reset('peer:b:ECONNREFUSED');
    logger.once('warn', 'peer:b:ECONNREFUSED', 'balancer.proxy_error', { n: 7 });
    assert.equal(lines.length, 3, 'reset: logged at once');
  });

  it('"once" remembers a bounded number of keys', () => {
    const { logger, lines } = make({ onceMaxKeys: 100 });
    for (let i = 0; i < 10_000; i++) logger.once('warn', `k${i}`, 'e');
    assert.equal(lines.length, 10_000);
    // The oldest keys were forgotten (logged again), the newest are remembered.
    logger.once('warn', 'k0', 'e');
    logger.once('warn', 'k9999', 'e');
    assert.equal(lines.length, 10_001);
  });
});
