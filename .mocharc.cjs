// MOCHA_SPEC=tests/a.test.ts,tests/b.test.ts runs only those files (mocha adds command-line files
// to the configured spec instead of replacing it).
module.exports = {
  require: ['tsx/cjs', 'tests/support/global.ts'],
  extension: ['ts'],
  spec: process.env.MOCHA_SPEC ? process.env.MOCHA_SPEC.split(',') : ['tests/**/*.test.ts'],
  reporter: 'tests/support/reporter.cjs',
  timeout: 60000,
  exit: true,
};
