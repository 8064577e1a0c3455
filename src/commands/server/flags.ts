import { parseDuration } from "../../lib/duration.ts";

/** The client a subcommand acts on, by name. */
export const clientNameArg = { type: "positional", required: true, description: "client name" } as const;

/** The IPv6 prefix `server add` and `server edit` take. */
export const ipv6PrefixFlag = { type: "string", description: "lease the /N (48-128) around the client's IPv6 address; needs lookup = \"policy\" below 128", valueHint: "N" } as const;

/** The expected renewal interval `server add` and `server edit` take. */
export const expectFlag = { type: "string", description: "how often the client renews (e.g. 4m): late after two intervals without a renewal; default: learned from its renewals", valueHint: "D" } as const;

/** What `server add` and `server edit` pass on from their flags: the client, its ttl and expected interval in seconds, allow list and IPv6 prefix. */
export function clientSettings(opts: { config?: string; name: string; ttl?: string; allow?: string[]; ipv6Prefix?: string; expect?: string }): {
  configPath?: string;
  name: string;
  ttl?: number;
  allow?: string[];
  ipv6Prefix?: number;
  expect?: number;
} {
  return {
    expect: opts.expect === undefined ? undefined : parseDuration(opts.expect, "expect", "--expect"),
    configPath: opts.config,
    name: opts.name,
    ttl: opts.ttl === undefined ? undefined : parseDuration(opts.ttl, "ttl", "--ttl"),
    allow: opts.allow,
    ipv6Prefix: opts.ipv6Prefix === undefined ? undefined : Number(opts.ipv6Prefix),
  };
}
