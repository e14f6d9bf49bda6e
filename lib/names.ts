/**
 * Names shared by the core, the server glue and the client glue. No imports: the client glue
 * (bundled for browsers) may load it.
 */

/** A service or instance name: 1-64 letters, digits, "_" or "-", starting with a letter or digit. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

/**
 * `__meteor_runtime_config__` key of the default DDP URL a page had before the server pinned it
 * (written by server/pin-ddp-url.ts, read by the client glue to fall back from a dead balancer).
 */
export const FALLBACK_KEY = 'DDP_CLUSTER_FALLBACK_URL';
