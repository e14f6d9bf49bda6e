/**
 * The test run's MongoDB: one server (examples/node-ddp-app/mongo.ts) started by the mocha global
 * setup (tests/support/global.ts) and shared by every suite.
 */
export * from '../../examples/node-ddp-app/mongo';
import type { MongoServer } from '../../examples/node-ddp-app/mongo';

let current: MongoServer | undefined;

/** The MongoServer started by the mocha global setup. */
export function mongo(): MongoServer {
  if (!current) {
    throw new Error(
      'No test MongoDB: tests/support/global.ts global setup has not run (run tests through mocha with .mocharc.json)',
    );
  }
  return current;
}

export function setMongo(server: MongoServer | undefined): void {
  current = server;
}

