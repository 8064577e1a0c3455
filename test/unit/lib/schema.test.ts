import { afterAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadServerConfig } from "../../../src/lib/config.ts";
import { parseDuration } from "../../../src/lib/duration.ts";
import { renderServerKeyTable, renderServerSkeleton, SERVER_KEYS } from "../../../src/lib/schema.ts";
import { removeTempDirs, tempDir } from "../helpers.ts";

afterAll(removeTempDirs);

/** What each key's default becomes in the loaded config, so the schema and the loader cannot drift apart. */
const LOADED: Record<string, (c: ReturnType<typeof loadServerConfig>) => unknown> = {
  listen: (c) => `[${c.listen.host}]:${c.listen.port}`,
  state_dir: (c) => c.stateDir,
  lookup: (c) => c.lookup,
  policy_socket: (c) => c.policySocket,
  map: (c) => c.map,
  exim_hosts: (c) => c.eximHosts,
  smtpd_table: (c) => c.smtpdTable,
  ttl: (c) => c.ttl,
  ipv6_prefix: (c) => c.ipv6Prefix,
  postmap_timeout: (c) => c.postmapTimeout,
  renewals_per_minute: (c) => c.renewalsPerMinute,
  log_format: (c) => c.logFormat,
  log_level: (c) => c.logLevel,
  audit_retention: (c) => c.auditRetention,
  stale_after: (c) => c.staleAfter,
  overdue_check: (c) => c.overdueCheck,
  client_metrics: (c) => c.clientMetrics,
};

describe("server config schema", () => {
  test("every default in the schema is what the loader uses when the key is absent", () => {
    const path = join(tempDir(), "empty.toml");
    writeFileSync(path, "");
    const config = loadServerConfig(path);
    const withDefaults = SERVER_KEYS.filter((k) => k.default !== null);
    expect(withDefaults.map((k) => k.key).sort()).toEqual(Object.keys(LOADED).sort());
    for (const k of withDefaults) {
      const parsed = (Bun.TOML.parse(`v = ${k.default}`) as { v: unknown }).v;
      const durations = ["ttl", "postmap_timeout", "audit_retention", "stale_after", "overdue_check"];
      const expected = durations.includes(k.key) ? parseDuration(parsed as string, k.key as never) : parsed;
      expect({ key: k.key, value: LOADED[k.key]!(config) }).toEqual({ key: k.key, value: expected });
    }
  });

  test("the loader accepts exactly the schema's keys, and every example parses", () => {
    const dir = tempDir();
    for (const k of SERVER_KEYS) {
      const path = join(dir, `${k.key}.toml`);
      const value = k.default ?? k.example!;
      // tls_cert and tls_key go together; the example paths need not exist to load.
      const extra = k.key === "tls_cert" ? 'tls_key = "/k.pem"\n' : k.key === "tls_key" ? 'tls_cert = "/c.pem"\n' : k.key === "database_password_file" ? 'database = "postgres://x@h/db"\n' : k.key === "alert_webhook_ca" ? 'alert_webhook = "https://h.example/x"\n' : "";
      writeFileSync(path, `${k.key} = ${value}\n${extra}`);
      expect(() => loadServerConfig(path)).not.toThrow();
    }
    const unknown = join(dir, "unknown.toml");
    writeFileSync(unknown, 'no_such_key = "x"\n');
    expect(() => loadServerConfig(unknown)).toThrow(/unknown key "no_such_key"/);
  });

  test("the skeleton is valid TOML that sets nothing, and names every key once; the docs table too", () => {
    const skeleton = renderServerSkeleton();
    expect(Bun.TOML.parse(skeleton)).toEqual({});
    for (const k of SERVER_KEYS) {
      expect(skeleton.match(new RegExp(`^#${k.key} = `, "gm"))).toHaveLength(1);
      expect(renderServerKeyTable()).toContain(`| \`${k.key}\` |`);
    }
  });
});
