import { lineFileRow } from "./linefile.ts";

/**
 * One line of the net-iplsearch file: the lease's address or network. An
 * IPv6 key is quoted, since Exim ends an unquoted key at its first colon
 * (spec, "iplsearch"); IPv4 keys stay bare.
 */
export function eximLine(text: string): string {
  return text.includes(":") ? `"${text}"` : text;
}

/**
 * The exim row of the lookup table: Exim reads the file afresh for each
 * connection, so an atomic rename is all a change needs (no reload).
 */
export const eximLookupType = lineFileRow(
  { name: "exim", key: "exim_hosts", example: "/etc/exim4/relayctl/hosts", path: (config) => config.eximHosts, line: eximLine },
);
