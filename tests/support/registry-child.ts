// A registry in its own process, configured by CLUSTER_* env vars; prints "ready" once it has
// polled, then stays up until killed. Tests kill -9 it to make an instance stop heartbeating.
import { parseConfig } from '../../lib/config';
import { Registry } from '../../lib/discovery/registry';
import { EMPTY_LOAD } from '../../lib/load';
import { createLogger } from '../../lib/log';

const config = parseConfig();
const registry = new Registry({ config, logger: createLogger('warn'), load: () => EMPTY_LOAD });
registry.setState('serving');
registry.start();
void registry.ready().then(() => process.stdout.write('ready\n'));
setInterval(() => undefined, 1 << 30);
process.on('SIGTERM', () => void registry.close().then(() => process.exit(0)));
