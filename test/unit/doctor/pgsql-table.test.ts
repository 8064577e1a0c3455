// Doctor's postfix.pgsql: relayctl pgsql: tables in main.cf, found in
// mynetworks and the relay restriction lists, bare or behind a pipemap.
import { describe, expect, test } from "bun:test";
import { pgsqlTableChecks, pgsqlTableFacts, type HookInput } from "../../../src/doctor/hook.ts";
import { PGSQL_QUERY } from "../../../src/server/stores/tools.ts";

const CF = "/etc/postfix/relayctl-pgsql.cf";
const RE = "/etc/postfix/relayctl-exact.regexp";
const STAGED = `pipemap:{regexp:${RE}, proxy:pgsql:${CF}}`;
/** What `relayctl server postfix-pgsql` printed before the relayctl schema. */
const OLD_FILE = `# Postfix pgsql: table for relayctl leases
hosts = postgresql://postfix@%2Fvar%2Frun%2Fpostgresql:5432/relayctl
dbname = relayctl
query = SELECT 'OK' FROM leases WHERE net >>= relayctl_inet('%s') AND expires_at > now() LIMIT 1
`;
const NEW_FILE = `hosts = postgresql://postfix@%2Fvar%2Frun%2Fpostgresql:5432/relayctl\ndbname = relayctl\nquery = ${PGSQL_QUERY}\n`;

function view(mynetworks: string, relay: string, explicit: Record<string, string> = {}): HookInput["view"] {
  return {
    configDir: "/etc/postfix",
    values: { mynetworks, smtpd_relay_restrictions: relay, smtpd_recipient_restrictions: "", mail_version: "3.7.11", default_database_type: "hash", mail_owner: "postfix", queue_directory: "/var/spool/postfix" },
    explicit: new Map(Object.entries(explicit)),
    mainCf: "",
  };
}

const checks = (v: HookInput["view"], files: Record<string, string>) => pgsqlTableChecks(v, pgsqlTableFacts(v, (p) => files[p] ?? null));

describe("postfix.pgsql", () => {
  test("a file with the old query fails, wherever it is hooked, with the command that prints it again for its role", () => {
    for (const v of [view("127.0.0.0/8", `check_client_access proxy:pgsql:${CF}, reject_unauth_destination`), view(`127.0.0.0/8 ${STAGED}`, "permit_mynetworks, reject_unauth_destination")]) {
      const [c, ...rest] = checks(v, { [CF]: OLD_FILE });
      expect(rest).toEqual([]);
      expect(c!.status).toBe("fail");
      expect(c!.message).toContain("older relayctl");
      expect(c!.hint).toContain(`relayctl server postfix-pgsql --user postfix --path ${CF} > ${CF}.new && mv ${CF}.new ${CF}`);
    }
  });

  test("the current query bare warns that inner '::' clients fail closed, with the staged hook as the fix", () => {
    const v = view("127.0.0.0/8", `permit_mynetworks, check_client_access proxy:pgsql:${CF}, reject_unauth_destination`, { smtpd_relay_restrictions: `permit_mynetworks, check_client_access proxy:pgsql:${CF}, reject_unauth_destination` });
    const [c] = checks(v, { [CF]: NEW_FILE });
    expect(c!.status).toBe("warn");
    expect(c!.hint).toContain(`printf '%s\\n' '/^([0-9A-Fa-f:.]+)$/ exact:$1' > ${RE}`);
    expect(c!.hint).toContain(`postconf -c /etc/postfix -e 'smtpd_relay_restrictions = permit_mynetworks, check_client_access ${STAGED}, reject_unauth_destination'`);
  });

  test("the current query behind the regexp stage passes; other pgsql tables and unreadable files are not judged", () => {
    const v = view(`127.0.0.0/8 ${STAGED}`, "permit_mynetworks, check_client_access pgsql:/etc/postfix/other.cf, reject_unauth_destination");
    expect(checks(v, { [CF]: NEW_FILE, "/etc/postfix/other.cf": "query = SELECT 'OK' FROM users WHERE ip = '%s'\n" }).map((c) => c.status)).toEqual(["pass"]);
    expect(checks(v, {})).toEqual([]);
  });

  test("a query continued on indented lines is read whole", () => {
    const v = view(`127.0.0.0/8 ${STAGED}`, "permit_mynetworks, reject_unauth_destination");
    const folded = NEW_FILE.replace(" AND expires_at", "\n    AND expires_at");
    expect(checks(v, { [CF]: folded }).map((c) => c.status)).toEqual(["pass"]);
  });
});

describe("postfix.pgsql: relayctl's regexp stage out of place", () => {
  const STAGE = "/^([0-9A-Fa-f:.]+)$/ exact:$1\n";

  test("alone in mynetworks, in a unionmap or after the pgsql table it fails as an open relay, with the list without it", () => {
    for (const [mynetworks, left] of [
      [`127.0.0.0/8 regexp:${RE}`, "127.0.0.0/8"],
      [`127.0.0.0/8 unionmap:{regexp:${RE}, proxy:pgsql:${CF}}`, "127.0.0.0/8"],
      [`127.0.0.0/8 pipemap:{proxy:pgsql:${CF}, regexp:${RE}}`, "127.0.0.0/8"],
    ] as const) {
      const c = checks(view(mynetworks, "permit_mynetworks, reject_unauth_destination", { mynetworks }), { [RE]: STAGE, [CF]: NEW_FILE }).find((x) => x.status === "fail");
      expect(c?.message).toContain("relays for everyone");
      expect(c?.hint).toContain(`postconf -c /etc/postfix -e 'mynetworks = ${left}'`);
    }
  });

  test("in a restriction list the check goes with it; the staged pipemap is not flagged", () => {
    const relay = `permit_mynetworks, check_client_access regexp:${RE}, reject_unauth_destination`;
    const [c] = checks(view("127.0.0.0/8", relay, { smtpd_relay_restrictions: relay }), { [RE]: STAGE });
    expect(c!.status).toBe("fail");
    expect(c!.hint).toContain("'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination'");
    expect(checks(view(`127.0.0.0/8 ${STAGED}`, "permit_mynetworks, reject_unauth_destination"), { [RE]: STAGE, [CF]: NEW_FILE }).map((x) => x.status)).toEqual(["pass"]);
    // Another regexp table is none of doctor's business here.
    expect(checks(view("127.0.0.0/8 regexp:/etc/postfix/lan.regexp", "permit_mynetworks"), { "/etc/postfix/lan.regexp": "/^10\\./ OK\n" })).toEqual([]);
  });
});
