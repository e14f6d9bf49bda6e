/**
 * SIGTERM/SIGINT → graceful drain, chained with whatever else listens: we add a listener and
 * never remove or swallow others. When nobody else handles the signal, the default action (exit)
 * is restored and the signal re-raised once the drain is done; a second signal exits at once.
 */
export interface Drainable {
  drain(): Promise<unknown>;
  close(): Promise<void>;
}

export type ShutdownSignal = 'SIGTERM' | 'SIGINT';

export function drainOnSignals(target: Drainable, signals: readonly ShutdownSignal[] = ['SIGTERM', 'SIGINT']): () => void {
  let draining = false;
  const listeners = new Map<ShutdownSignal, () => void>();
  const remove = (): void => {
    for (const [signal, fn] of listeners) process.off(signal, fn);
    listeners.clear();
  };
  for (const signal of signals) {
    const fn = (): void => {
      const othersHandle = process.listenerCount(signal) > 1;
      if (draining) {
        // Asked twice: stop waiting.
        if (!othersHandle) {
          remove();
          process.kill(process.pid, signal);
        }
        return;
      }
      draining = true;
      void target.drain()
        .catch(() => undefined)
        .then(() => target.close())
        .catch(() => undefined)
        .then(() => {
          if (othersHandle) return;
          remove();
          process.kill(process.pid, signal);
        });
    };
    listeners.set(signal, fn);
    process.on(signal, fn);
  }
  return remove;
}
