#!/usr/bin/env node
'use strict';
// The `ddp-cluster` command of the published package: the compiled lib/cli.ts.
require('../dist/lib/cli.js').main();
