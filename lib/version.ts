/** The package version written into registry documents; bumped with package.json. */
export const PACKAGE_VERSION = '0.1.0';
