import type { EventEmitter } from 'node:events';

/**
 * Resolves with the first value of `event` for which `check` returns something other than
 * undefined/false, also checking `initial()` first. Rejects after `timeoutMs` with `what` in the message.
 */
export function waitForEvent<T>(
  emitter: EventEmitter,
  event: string,
  check: () => T | undefined | false,
  what: string,
  timeoutMs = 20_000,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const first = check();
    if (first !== undefined && first !== false) return resolve(first);
    const onEvent = (): void => {
      const v = check();
      if (v !== undefined && v !== false) {
        cleanup();
        resolve(v);
      }
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
    }, timeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      emitter.off(event, onEvent);
    };
    emitter.on(event, onEvent);
  });
}

/** Re-checks `check` every `everyMs` until it holds; for state with no event to listen to. */
export async function eventually<T>(check: () => Promise<T | undefined | false> | T | undefined | false, what: string,
  timeoutMs = 20_000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${String(lastErr)}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
