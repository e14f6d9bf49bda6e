import type { ClusterHandle } from '../lib/index';
import { FALLBACK_KEY } from '../lib/names';
import type { RuntimeConfigHookArgs, WebAppServer } from './meteor-env';

/** Where a pinned client goes back to when its pinned balancer stops answering (client/index.ts). */
export { FALLBACK_KEY };

/**
 * Points each page's DDP connection straight at the balancer URL of the member picked for it,
 * through webapp's runtime config hook. Note that webapp keeps a hook's result as the base for
 * the next request (getBoilerplateAsync assigns it to boilerplate.baseData), so the original
 * DDP_DEFAULT_CONNECTION_URL is remembered per arch and restored whenever nothing is picked.
 * Cordova apps keep their config until the next hot code push: when MOBILE_DDP_URL is set, that
 * operator-chosen URL stays.
 */
export function pinDdpUrl(webApp: WebAppServer, handle: ClusterHandle, mobileDdpUrl: string | undefined): { stop(): void } {
  const originals = new Map<string, unknown>();
  return webApp.addRuntimeConfigHook(({ arch, request, encodedCurrentConfig, updated }: RuntimeConfigHookArgs) => {
    if (arch === 'web.cordova' && mobileDdpUrl) return undefined;
    const config = webApp.decodeRuntimeConfig(encodedCurrentConfig);
    if (updated || !originals.has(arch)) originals.set(arch, config.DDP_DEFAULT_CONNECTION_URL);
    const original = originals.get(arch);
    const picked = handle.pickDdpUrl(request);
    const url = picked ?? original;
    const fallback = picked === null ? undefined : typeof original === 'string' ? original : '/';
    if (config.DDP_DEFAULT_CONNECTION_URL === url && config[FALLBACK_KEY] === fallback) return undefined;
    if (url === undefined) delete config.DDP_DEFAULT_CONNECTION_URL;
    else config.DDP_DEFAULT_CONNECTION_URL = url;
    if (fallback === undefined) delete config[FALLBACK_KEY];
    else config[FALLBACK_KEY] = fallback;
    return webApp.encodeRuntimeConfig(config);
  });
}
