/**
 * A client that stops renewing: late -> silent -> back, one alert each and
 * none while it renews, through all three channels for real: alert_command
 * (a program), alert_webhook (a local HTTPS receiver with its own CA) and
 * alert_mail (the private Postfix instance's sendmail; the mail is found in
 * its queue). Time is short rather than faked: --expect 2s, ttl 10s, a check
 * every second.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { generateSelfSigned } from "../../src/lib/tls.ts";
import { freePort, requireE2E, run } from "./harness.ts";
import { onHost, relayctl, stage, type Stage } from "./relayctl.ts";

setDefaultTimeout(60_000);
const enabled = requireE2E();

interface Event {
  event: string;
  client: string | null;
  state: string | null;
  last_address: string | null;
}

describe.skipIf(!enabled)("knowing when a client goes silent", () => {
  let s: Stage;
  let hook: ReturnType<typeof Bun.serve> | undefined;
  const posted: Event[] = [];
  let eventsFile = "";
  const commanded = (): Event[] => (existsSync(eventsFile) ? readFileSync(eventsFile, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as Event) : []);
  const maildrop = (): string[] => {
    const dir = join(s.postfix.queueDir, "maildrop");
    return existsSync(dir) ? readdirSync(dir) : [];
  };
  const renew = () => onHost(s.h1, ["client", "--config", s.cfg("nas")]);
  const overdue = () => relayctl(["server", "list", "--overdue", "--json", "--config", s.config]);
  const waitFor = async (what: string, ok: () => boolean, ms = 20_000): Promise<void> => {
    for (const deadline = Date.now() + ms; !ok(); await Bun.sleep(100)) if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: command saw ${JSON.stringify(commanded())}\n${s.server?.stderr()}`);
  };
  const events = () => commanded().map((e) => e.event);

  beforeAll(async () => {
    s = await stage({
      prefix: "rco",
      prepare: async (st) => {
        const tls = generateSelfSigned({ hosts: ["127.0.0.1"] });
        const ca = join(st.tmp.path, "hook-ca.pem");
        writeFileSync(ca, tls.certPem);
        hook = Bun.serve({
          hostname: "127.0.0.1",
          port: freePort(),
          tls: { cert: tls.certPem, key: tls.keyPem },
          fetch: async (req) => {
            posted.push((await req.json()) as Event);
            return new Response("ok");
          },
        });
        st.onCleanup(async () => hook?.stop(true));
        eventsFile = join(st.tmp.path, "events.jsonl");
        st.writeConfig({
          ttl: "10s",
          overdue_check: "1s",
          alert_command: ["/bin/sh", "-c", `cat >> ${eventsFile}`],
          alert_webhook: `https://127.0.0.1:${hook.port}/hook`,
          alert_webhook_ca: ca,
          alert_mail: ["ops@relayctl.test"],
        });
      },
      start: false,
    });
    // The server's postconf and sendmail find the private Postfix instance by MAIL_CONFIG.
    await s.start({ MAIL_CONFIG: s.postfix.configDir });
    await s.enroll(s.h1, "nas", ["--expect", "2s"]);
  }, 180_000);
  afterAll(() => s?.cleanup());

  test("renewing on time raises nothing; a stop makes it late, then silent, then a renewal brings it back: one alert each", async () => {
    const first = await renew();
    expect(first.code, first.stderr).toBe(0);
    for (let i = 0; i < 4; i++) {
      await Bun.sleep(1_500);
      expect((await renew()).code).toBe(0);
    }
    // Two checks after the last renewal, still within two intervals.
    await Bun.sleep(1_200);
    expect(events()).toEqual([]);
    expect(posted).toEqual([]);
    const ok = await overdue();
    expect(ok.code, ok.stderr).toBe(0);
    expect(JSON.parse(ok.stdout)).toEqual({ clients: [] });

    await waitFor("late", () => events().length >= 1);
    expect(commanded()).toMatchObject([{ event: "late", client: "nas", state: "late", last_address: "198.18.0.2" }]);
    const late = await overdue();
    expect(late.code).toBe(1);
    expect(late.stderr).toContain("1 client(s) late, 0 silent: nas");
    expect(JSON.parse(late.stdout).clients).toMatchObject([{ name: "nas", state: "late", last_address: "198.18.0.2", expect: 2, expect_learned: false }]);

    await waitFor("silent", () => events().length >= 2);
    expect(events()).toEqual(["late", "silent"]);
    const silent = await overdue();
    expect(silent.code).toBe(1);
    // The lease is gone; where the client was last seen is not.
    expect(JSON.parse(silent.stdout).clients).toMatchObject([{ name: "nas", state: "silent", leases: [], last_address: "198.18.0.2" }]);
    expect(await s.relays(s.h1)).toBe(false);

    expect((await renew()).code).toBe(0);
    await waitFor("back", () => events().length >= 3);
    expect(await s.relays(s.h1)).toBe(true);
    expect((await overdue()).code).toBe(0);
    // A few more checks pass: nothing more is sent.
    await Bun.sleep(2_500);
    expect(events()).toEqual(["late", "silent", "back"]);
    await waitFor("three webhook posts", () => posted.length >= 3, 5_000);
    expect(posted.map((e) => e.event)).toEqual(["late", "silent", "back"]);
    await waitFor("three mails in the queue", () => maildrop().length >= 3, 5_000);
    expect(maildrop().length).toBe(3);
    const mails = await Promise.all(maildrop().map((f) => run(["postcat", "-c", s.postfix.configDir, "-q", f])));
    const late1 = mails.map((m) => m.stdout).find((m) => m.includes("Subject: relayctl: client nas is late"));
    expect(late1, mails.map((m) => m.stdout + m.stderr).join("\n")).toBeDefined();
    expect(late1).toContain("ops@relayctl.test");
  });
});
