/**
 * Mocha global fixtures (loaded through "require" in .mocharc.json): one MongoDB for the whole run.
 * Tests get it with `mongo()`; child processes get its URL from $CLUSTER_TEST_MONGO_URL_RESOLVED.
 *
 * If the server cannot be started, the error is re-thrown from a root before-all hook, so the run
 * reports it as a failure (and the reporter's summary line is still printed) instead of crashing.
 */
import { disposeAll, mongo, setMongo, startMongo } from './mongo';

export { mongo };

let setupError: unknown;

export async function mochaGlobalSetup(): Promise<void> {
  try {
    const server = await startMongo();
    setMongo(server);
    process.env.CLUSTER_TEST_MONGO_URL_RESOLVED = server.url;
  } catch (err) {
    setupError = err;
  }
}

export async function mochaGlobalTeardown(): Promise<void> {
  setMongo(undefined);
  delete process.env.CLUSTER_TEST_MONGO_URL_RESOLVED;
  await disposeAll();
}

export const mochaHooks = {
  beforeAll: function testMongoIsAvailable(): void {
    if (setupError !== undefined) throw setupError;
  },
};
