import assert from 'node:assert/strict';
import { LoadSampler } from '../lib/load';
import { eventually } from './support/wait';

describe('LoadSampler', () => {
  it('reports event-loop delay net of the histogram\'s sampling resolution (an idle loop is not 20 ms late)', async () => {
    const sampler = new LoadSampler(() => 0, 100);
    try {
      sampler.sample();
      // An idle loop, sampled for a while (each timer tick of the histogram is one sample).
      await eventually(() => sampler.delaySamples() >= 10, 'ten delay samples', 10_000);
      const s = sampler.sample();
      assert.ok(s.delayMs >= 0, `delay ${s.delayMs} ms`);
      // The raw p99 is the 20 ms resolution plus the real delay, never below 20 ms.
      assert.ok(s.delayMs < 20, `delay ${s.delayMs} ms`);
    } finally {
      sampler.close();
    }
  });
});
