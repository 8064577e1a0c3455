// Replaced at build time by build.ts (Bun.build `define`); source runs say "dev".
declare const RELAYCTL_VERSION: string | undefined;
declare const RELAYCTL_COMMIT: string | undefined;
declare const RELAYCTL_TARGET: string | undefined;

export const VERSION = typeof RELAYCTL_VERSION === "string" ? RELAYCTL_VERSION : "0.0.0-dev";
export const COMMIT = typeof RELAYCTL_COMMIT === "string" ? RELAYCTL_COMMIT : "unknown";
export const TARGET = typeof RELAYCTL_TARGET === "string" ? RELAYCTL_TARGET : `source-${process.platform}-${process.arch}`;

/** The `--version` line: version, commit and build target. */
export function versionLine(): string {
  return `relayctl ${VERSION} (commit ${COMMIT}, ${TARGET})`;
}
