/** The cluster secret the demo and the bench give their local instances (never use it in production). */
export const EXAMPLE_SECRET = 'test-cluster-secret-0123456789abcdef';
