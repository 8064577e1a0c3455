import { describe, expect, test } from "bun:test";
import { policySocketChecks, type PolicySocketFacts } from "../../../src/doctor/policy.ts";

const SERVICE = 998;
const POSTFIX_GID = 102;
const facts = (o: Partial<PolicySocketFacts> = {}): PolicySocketFacts => ({
  path: "/var/spool/postfix/relayctl/policy",
  socket: { isSocket: true, mode: 0o140660, gid: POSTFIX_GID },
  dir: { mode: 0o42750, uid: SERVICE, gid: POSTFIX_GID },
  postfixGid: POSTFIX_GID,
  serviceUid: SERVICE,
  queueDirectory: "/var/spool/postfix",
  chroot: true,
  probe: { action: "DUNNO" },
  ...o,
});
const dirCheck = (f: PolicySocketFacts) => policySocketChecks(f).find((c) => c.id === "policy.socket_dir")!;

describe("policy.socket_dir", () => {
  test("relayctl's own 2750 directory passes", () => {
    expect(dirCheck(facts()).status).toBe("pass");
  });

  test("a directory of relayctl's with wrong mode or group is fixed in place", () => {
    const c = dirCheck(facts({ dir: { mode: 0o40755, uid: SERVICE, gid: 0 } }));
    expect(c.status).toBe("fail");
    expect(c.hint).toBe("chown relayctl:postfix /var/spool/postfix/relayctl && chmod 2750 /var/spool/postfix/relayctl");
  });

  test("a directory another user owns (Postfix's private/) is never handed over: the fix moves the socket", () => {
    const c = dirCheck(facts({ path: "/var/spool/postfix/private/relayctl", dir: { mode: 0o40700, uid: 101, gid: POSTFIX_GID } }));
    expect(c.status).toBe("fail");
    expect(c.message).toContain("owned by neither the service user nor root");
    expect(c.hint).not.toContain("chown");
    expect(c.hint).toBe('set policy_socket = "/var/spool/postfix/relayctl/policy" in server.toml, then: install -d -o relayctl -g postfix -m 2750 /var/spool/postfix/relayctl');
  });
});
