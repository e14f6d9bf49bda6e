'use strict';
// Mocha's Spec reporter plus one final summary line: `N passed, N failed[, N skipped]`.
// "failed" counts failed tests and failed hooks (mocha emits EVENT_TEST_FAIL for both).
const Mocha = require('mocha');

const { Spec } = Mocha.reporters;
const { EVENT_RUN_END, EVENT_TEST_PASS, EVENT_TEST_FAIL, EVENT_TEST_PENDING } = Mocha.Runner.constants;

class SummaryReporter extends Spec {
  constructor(runner, options) {
    super(runner, options);
    let passed = 0;
    let failed = 0;
    let skipped = 0;
    runner.on(EVENT_TEST_PASS, () => passed++);
    runner.on(EVENT_TEST_FAIL, () => failed++);
    runner.on(EVENT_TEST_PENDING, () => skipped++);
    // Registered after Spec's own EVENT_RUN_END listener, so this prints after mocha's summary.
    runner.once(EVENT_RUN_END, () => {
      const parts = [`${passed} passed`, `${failed} failed`];
      if (skipped > 0) parts.push(`${skipped} skipped`);
      process.stdout.write(`\n${parts.join(', ')}\n`);
    });
  }
}

module.exports = SummaryReporter;
