/**
 * Where a renewal's (and a policy answer's) time goes, in microseconds.
 *
 * 1. Server CPU per request under the same wrk load (bench/renew.lua, 50
 *    keep-alive connections) for a bare Bun.serve over plain HTTP, the same
 *    over TLS, and the relayctl server: HTTP = bare plain, TLS = bare TLS -
 *    bare plain, application = relayctl - bare TLS.
 * 2. The application part split into its stages by timing spans around the
 *    server's own functions, called in this process over a state.db seeded
 *    like the throughput figure's (10,000 clients and leases): each stage run
 *    N times back to back, µs per call, median of several repetitions.
 * 3. The same for one policy answer (RequestReader.feed, the handler, answer).
 *
 * Bench only: nothing here is on a server path.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { loadServerConfig } from "../src/lib/config.ts";
import { parseIp } from "../src/lib/ip.ts";
import { leaseRoute } from "../src/server/doors/api.ts";
import { systemClock } from "../src/lib/clock.ts";
import { LeaseBook } from "../src/server/leases.ts";
import { mapLookupType } from "../src/server/lookups/map.ts";
import type { Lookup } from "../src/server/lookups/index.ts";
import { policyHandler } from "../src/server/lookups/policy.ts";
import { Metrics } from "../src/server/metrics.ts";
import { answer, RequestReader } from "../src/server/policy/protocol.ts";
import { RefusalLog } from "../src/server/refusals.ts";
import { leaseNetwork, LeaseService } from "../src/server/service.ts";
import { StateStore } from "../src/server/state.ts";
import { SqliteStore } from "../src/server/stores/sqlite.ts";
import { AuthThrottle, RenewalLimiter } from "../src/server/throttle.ts";
import { authenticate, bearer } from "../src/server/tokens.ts";
import { createHash, timingSafeEqual } from "node:crypto";
import { run } from "../test/e2e/harness.ts";
import { benchAddress, BUN, cpuMsOf, median, ROOT, scratch, seedState, startServer, stopPid, toolPath, track, writeServerConfig, type Row } from "./lib.ts";
import { startBare } from "./load.ts";

/** µs per call of fn, median of `reps` repetitions of n calls (after one unrecorded repetition). */
async function span(n: number, reps: number, fn: (i: number) => unknown): Promise<number> {
  const out: number[] = [];
  for (let r = -1; r < reps; r++) {
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      const x = fn(i);
      if (x instanceof Promise) await x;
    }
    if (r >= 0) out.push(((performance.now() - t0) * 1000) / n);
  }
  return median(out);
}

async function wrkCpu(url: string, pid: number, env: Record<string, string>, seconds: number): Promise<{ cpuUs: number; rps: number }> {
  const cpu0 = cpuMsOf(pid);
  const r = await run([toolPath("wrk"), "-t1", "-c50", `-d${seconds}s`, "--timeout", "5s", "-s", join(import.meta.dir, "renew.lua"), url], { env, timeoutMs: (seconds + 30) * 1000 });
  const cpu1 = cpuMsOf(pid);
  const line = r.stdout.split("\n").find((l) => l.startsWith("BENCH_JSON "));
  if (r.code !== 0 || !line) throw new Error(`wrk failed: ${r.stderr}`);
  const o = JSON.parse(line.slice("BENCH_JSON ".length)) as { requests: number; duration_us: number };
  return { cpuUs: ((cpu1 - cpu0) * 1000) / o.requests, rps: o.requests / (o.duration_us / 1e6) };
}

/** Runs `bun --cpu-prof-md src/cli.ts server` on a config under wrk and returns the top self-time rows of its Markdown profile. */
async function cpuProfile(config: string, port: number, env: Record<string, string>, seconds: number, dir: string): Promise<{ rows: string[]; requests: number; samples: string }> {
  const profDir = join(dir, "cpuprof");
  const p = Bun.spawn([BUN, "--cpu-prof", "--cpu-prof-md", "--cpu-prof-dir", profDir, join(ROOT, "src", "cli.ts"), "server", "--config", config], { stdin: "ignore", stdout: "ignore", stderr: "ignore" });
  track(p.pid, "relayctl server (cpu-prof)");
  const url = `https://127.0.0.1:${port}`;
  for (let i = 0; i < 400; i++) {
    try {
      const r = await fetch(`${url}/healthz`, { tls: { rejectUnauthorized: false } } as RequestInit);
      await r.text();
      if (r.ok) break;
    } catch {
      // not yet
    }
    await Bun.sleep(25);
  }
  let requests = 0;
  try {
    await wrkCpu(`${url}/v1/lease`, p.pid, env, 1);
    const r = await run([toolPath("wrk"), "-t1", "-c50", `-d${seconds}s`, "--timeout", "5s", "-s", join(import.meta.dir, "renew.lua"), `${url}/v1/lease`], { env, timeoutMs: (seconds + 30) * 1000 });
    requests = JSON.parse(r.stdout.split("\n").find((l) => l.startsWith("BENCH_JSON "))!.slice(11)).requests;
  } finally {
    await stopPid(p.pid);
  }
  const md = readdirSync(profDir).find((f) => f.endsWith(".md"));
  if (!md) return { rows: [], requests, samples: "no profile written" };
  const text = readFileSync(join(profDir, md), "utf8");
  const samples = /^\| ([\d.]+s) \| (\d+) \|/m.exec(text);
  const rows = text.split("\n").filter((l) => /^\|\s*[\d.]+% \|/.test(l)).slice(0, 15);
  return { rows, requests, samples: samples ? `${samples[2]} samples over ${samples[1]}` : "" };
}

const us = (x: number) => (x >= 10 ? x.toFixed(0) : x.toFixed(1));

export async function benchProfile(o: { leases: number; seconds: number; n: number; reps: number }): Promise<{ rows: Row[]; details: string[]; sections: string[] }> {
  // ---- 1. server CPU per request: bare HTTP, bare TLS (+ body read two ways), relayctl at 1 and N leases
  const dir = scratch("prof");
  const cfg = writeServerConfig(dir);
  const seeded = seedState(cfg.stateDir, { clients: o.leases, leases: true, keepTokens: 2 });
  const ip0 = benchAddress(0);
  const env = { BENCH_TOKEN: seeded.tokens[0]!, BENCH_BODY: JSON.stringify({ ip: ip0 }) };
  const server = await startServer(dir, cfg);
  const key = join(cfg.stateDir, "tls", "key.pem");
  const bares = {
    plain: await startBare(server.certPath, key, { flags: ["plain"] }),
    tls: await startBare(server.certPath, key),
    stream: await startBare(server.certPath, key, { flags: ["stream"] }),
    text: await startBare(server.certPath, key, { flags: ["text"] }),
  };
  // The same server shape with a single lease: what does not depend on the number of leases.
  const dir1 = scratch("prof1");
  const cfg1 = writeServerConfig(dir1);
  const seeded1 = seedState(cfg1.stateDir, { clients: 1, leases: true, keepTokens: 1 });
  const server1 = await startServer(dir1, cfg1);
  const env1 = { BENCH_TOKEN: seeded1.tokens[0]!, BENCH_BODY: JSON.stringify({ ip: ip0 }) };
  type M = { cpuUs: number; rps: number };
  let net: Record<"plain" | "tls" | "stream" | "text" | "relayctl" | "relayctl1", M>;
  try {
    const targets: [keyof typeof net, string, number, Record<string, string>][] = [
      ["plain", bares.plain.url, bares.plain.pid, env],
      ["tls", bares.tls.url, bares.tls.pid, env],
      ["stream", bares.stream.url, bares.stream.pid, env],
      ["text", bares.text.url, bares.text.pid, env],
      ["relayctl", server.url, server.pid, env],
      ["relayctl1", server1.url, server1.pid, env1],
    ];
    for (const [, u, p, e] of targets) await wrkCpu(`${u}/v1/lease`, p, e, 1); // warm-up
    const m: Record<string, M[]> = {};
    for (let i = 0; i < 2; i++) for (const [k, u, p, e] of targets) (m[k] ??= []).push(await wrkCpu(`${u}/v1/lease`, p, e, o.seconds));
    const med = (xs: M[]) => ({ cpuUs: median(xs.map((x) => x.cpuUs)), rps: median(xs.map((x) => x.rps)) });
    net = Object.fromEntries(Object.entries(m).map(([k, v]) => [k, med(v)])) as typeof net;
  } finally {
    for (const b of Object.values(bares)) await stopPid(b.pid);
    await server1.stop();
    await server.stop();
  }

  // ---- 1b. sampling profile of the server run from source (bun --cpu-prof-md) under the same load
  const hot = await cpuProfile(cfg.config, server.port, env, o.seconds, dir);

  // ---- 2. application stages, in this process, over the same state
  const config = loadServerConfig(cfg.config);
  const store = new StateStore(cfg.stateDir);
  const S: Record<string, number> = {};
  try {
    const shared = new SqliteStore(store, systemClock);
    const leases = new LeaseBook(shared, () => config.ttl, systemClock);
    await leases.reload();
    const metrics = new Metrics();
    const lookup = { type: mapLookupType, problems: () => [] } as unknown as Lookup;
    const service = new LeaseService({
      store: shared,
      leases,
      lookup,
      clock: systemClock,
      metrics,
      refusals: new RefusalLog(shared.refusalSink(), systemClock),
      authThrottle: new AuthThrottle(),
      config: () => config,
      renewals: () => new RenewalLimiter(0),
      publish: async () => {},
    });
    const token = seeded.tokens[0]!;
    const authz = `Bearer ${token}`;
    const body = JSON.stringify({ ip: ip0 });
    const tokenId = token.slice(0, 16);
    const secret = token.slice(17);
    const client = store.getClientByTokenId(tokenId)!;
    const observed = parseIp("127.0.0.1")!;
    const net0 = leaseNetwork(client, observed, ip0, 128);
    const limiter = new RenewalLimiter(0);
    const fakeServer = { requestIP: () => ({ address: "127.0.0.1", family: "IPv4", port: 40000 }) } as never;
    const route = leaseRoute(service);
    const mkReq = () => new Request("https://127.0.0.1/v1/lease", { method: "POST", headers: { authorization: authz, "content-type": "application/json" }, body });
    const { n, reps } = o;

    S.request = await span(n, reps, () => mkReq());
    S.route = (await span(n, reps, async () => (await route(mkReq(), fakeServer)).status)) - S.request;
    S.believe = await span(n, reps, () => service.believe("127.0.0.1", null));
    S.bearer = await span(n, reps, () => bearer(authz));
    S.authSql = await span(n, reps, () => store.getClientByTokenId(tokenId));
    const hash = Buffer.from(client.token_hash);
    S.authHash = await span(n, reps, () => timingSafeEqual(createHash("sha256").update(secret).digest(), hash));
    S.auth = await span(n, reps, () => authenticate(store, { token }));
    S.body = (await span(n, reps, async () => JSON.parse(Buffer.from(await mkReq().arrayBuffer()).toString("utf8")))) - S.request;
    S.limiter = await span(n, reps, () => limiter.take(client.name));
    S.network = await span(n, reps, () => leaseNetwork(client, observed, ip0, 128));
    S.sqlRead = await span(n, reps, () => store.leasesOf(client.name));
    S.sqlTxEmpty = await span(n, reps, () => store.tx(() => 0));
    const lease = store.leasesOf(client.name)[0]!;
    let at = lease.expires_at;
    S.sqlExtendTx = await span(n, reps, () => store.tx(() => store.extendLease(client, 4, lease.ip, lease.renewed_at, ++at)));
    // The server's path: 50 renewals arriving together share one COMMIT (SqliteStore group commit).
    S.sqlExtend50 = (await span(n / 50, reps, () => Promise.all(Array.from({ length: 50 }, () => shared.tx((t) => t.extendLease(client, 4, lease.ip, lease.renewed_at, ++at)))))) / 50;
    S.sqlUpsertTx = await span(n, reps, (i) => store.tx(() => store.upsertLease({ ...lease, renewed_at: lease.renewed_at + i, renewals: lease.renewals + i })));
    // Group commit: the same upserts for 1,000 different clients, one transaction each vs 50 per transaction.
    const many = store.allLeases().slice(0, 1000);
    S.sqlUpsertMany1 = await span(n, reps, (i) => {
      const l = many[i % many.length]!;
      return store.tx(() => store.upsertLease({ ...l, renewed_at: l.renewed_at + i, renewals: l.renewals + i }));
    });
    S.sqlUpsertMany50 = (await span(n / 50, reps, (j) =>
      store.tx(() => {
        for (let k = 0; k < 50; k++) {
          const i = j * 50 + k;
          const l = many[i % many.length]!;
          store.upsertLease({ ...l, renewed_at: l.renewed_at + i, renewals: l.renewals + i });
        }
      }),
    )) / 50;
    S.indexPut = await span(n, reps, () => leases.index.put(lease));
    S.renew = await span(n, reps, () => leases.renew(client, net0, "127.0.0.1"));
    S.service = await span(n, reps, () => service.renew(client, observed, ip0));
    S.answer = await span(n, reps, () => {
      const r = { client: client.name, ip: ip0, expires_at: new Date(lease.expires_at).toISOString(), ttl: 1200, event: "renew" };
      return new Response(JSON.stringify(r) + "\n", { status: 200, headers: { "content-type": "application/json", "cache-control": "no-store" } });
    });
    S.metrics = await span(n, reps, () => metrics.event("renew"));
  } finally {
    store.close();
  }

  // ---- 3. one policy answer
  const { LiveIndex } = await import("../src/server/live.ts");
  const index = new LiveIndex();
  const now = Date.now();
  index.load(Array.from({ length: o.leases }, (_, i) => ({ client: `s${i}`, family: 4, ip: benchAddress(i), granted_at: now, renewed_at: now, expires_at: now + 3_600_000, renewals: 0 })));
  const handler = policyHandler(index, systemClock);
  const reqText = [
    "request=smtpd_access_policy", "protocol_state=RCPT", "protocol_name=ESMTP", "helo_name=host-1.dyn.example.net", "queue_id=4A1F2B3", "sender=user1@example.net",
    "recipient=rcpt1@example.org", "recipient_count=0", `client_address=${benchAddress(5)}`, "client_name=host-1.dyn.example.net", "reverse_client_name=host-1.dyn.example.net",
    "instance=1.6564a1b2.1.0", "sasl_method=", "sasl_username=", "sasl_sender=", "size=1001", "ccert_subject=", "ccert_issuer=", "ccert_fingerprint=",
    "encryption_protocol=TLSv1.3", "encryption_cipher=TLS_AES_256_GCM_SHA384", "encryption_keysize=256", "etrn_domain=", "stress=", "ccert_pubkey_fingerprint=",
    "client_port=40001", "policy_context=", "server_address=198.51.100.25", "server_port=25", "", "",
  ].join("\n");
  const reqBytes = new TextEncoder().encode(reqText);
  const P: Record<string, number> = {};
  const reader = new RequestReader();
  const attrs = reader.feed(reqBytes)[0]!;
  const ipText = benchAddress(5);
  const ipParsed = parseIp(ipText)!;
  P.feed = await span(o.n * 4, o.reps, () => reader.feed(reqBytes));
  P.decode = await span(o.n * 4, o.reps, () => new TextDecoder().decode(reqBytes));
  P.handler = await span(o.n * 4, o.reps, () => handler(attrs));
  P.parseIp = await span(o.n * 4, o.reps, () => parseIp(ipText));
  P.covers = await span(o.n * 4, o.reps, () => index.covers(ipParsed, Date.now()));
  P.answer = await span(o.n * 4, o.reps, () => answer("OK"));
  // Bench-only prototypes of a cheaper reader, as evidence for the notes (not used by relayctl):
  const dec = new TextDecoder();
  P.protoSplit = await span(o.n * 4, o.reps, () => {
    const text = dec.decode(reqBytes);
    const m = new Map<string, string>();
    for (const line of text.slice(0, text.indexOf("\n\n")).split("\n")) {
      const eq = line.indexOf("=");
      if (eq <= 0) throw new Error("bad line");
      m.set(line.slice(0, eq), line.slice(eq + 1));
    }
    return m;
  });
  P.protoScan = await span(o.n * 4, o.reps, () => {
    const text = dec.decode(reqBytes);
    const value = (name: string): string | undefined => {
      const at = text.startsWith(`${name}=`) ? 0 : text.indexOf(`\n${name}=`) + 1;
      if (at === 0 && !text.startsWith(`${name}=`)) return undefined;
      const from = at + name.length + 1;
      return text.slice(from, text.indexOf("\n", from));
    };
    return [value("request"), value("client_address"), text.indexOf("\n\n")];
  });
  P.whole = await span(o.n * 4, o.reps, () => {
    const out: Buffer[] = [];
    for (const a of reader.feed(reqBytes)) out.push(answer(handler(a)));
    return out;
  });

  const stagesSum = S.believe! + S.auth! + S.body! + S.limiter! + S.network! + S.sqlExtend50! + S.indexPut! + S.answer! + S.metrics!;
  const table = [
    "### Where one renewal's time goes (µs)",
    "",
    "| part | µs | how measured |",
    "|---|---|---|",
    `| **whole renewal, server CPU, ${o.leases.toLocaleString("en-US")} leases** | **${us(net.relayctl.cpuUs)}** | relayctl server user+sys CPU per request under wrk (${net.relayctl.rps.toFixed(0)} req/s) |`,
    `| whole renewal, server CPU, 1 lease | ${us(net.relayctl1.cpuUs)} | the same with a single seeded lease (${net.relayctl1.rps.toFixed(0)} req/s): the difference grows with the number of leases |`,
    `| HTTP (Bun.serve: parse, Request/Response, keep-alive) | ${us(net.plain.cpuUs)} | bare Bun.serve over plain HTTP, same wrk load (${net.plain.rps.toFixed(0)} req/s) |`,
    `| TLS (records on a kept-alive connection) | ${us(net.tls.cpuUs - net.plain.cpuUs)} | bare TLS ${us(net.tls.cpuUs)} − bare plain (${net.tls.rps.toFixed(0)} req/s) |`,
    `| body read in one call, as readJsonBody does | ${us(net.text.cpuUs - net.tls.cpuUs)} | bare TLS + req.text() ${us(net.text.cpuUs)} (${net.text.rps.toFixed(0)} req/s) − bare TLS |`,
    `| · the same through a stream reader (what it did before round two) | ${us(net.stream.cpuUs - net.tls.cpuUs)} | bare TLS + getReader loop ${us(net.stream.cpuUs)} (${net.stream.rps.toFixed(0)} req/s) − bare TLS |`,
    `| application (everything relayctl adds after TLS + body) | ${us(net.relayctl.cpuUs - net.text.cpuUs)} | relayctl − bare TLS with a one-call body read |`,
    `| · of which route handler, in-process | ${us(S.route!)} | leaseRoute(service) on a prebuilt Request, state.db as in the server |`,
    `| · · believe (peer address, proxies) | ${us(S.believe!)} | service.believe |`,
    `| · · auth: Bearer parse | ${us(S.bearer!)} | bearer() |`,
    `| · · auth: SQLite client lookup by token id | ${us(S.authSql!)} | store.getClientByTokenId |`,
    `| · · auth: sha256 + constant-time compare | ${us(S.authHash!)} | createHash + timingSafeEqual |`,
    `| · · auth: whole | ${us(S.auth!)} | tokens.authenticate |`,
    `| · · JSON body: one-call read + JSON.parse | ${us(S.body!)} | arrayBuffer + JSON.parse, as readJsonBody |`,
    `| · · rate limiter (off) | ${us(S.limiter!)} | RenewalLimiter.take |`,
    `| · · address rules (allow list JSON.parse, CIDR, special ranges) | ${us(S.network!)} | leaseNetwork |`,
    `| · · SQLite: empty IMMEDIATE transaction | ${us(S.sqlTxEmpty!)} | store.tx(() => 0) |`,
    `| · · SQLite: plain renewal, one UPDATE … RETURNING + its own commit | ${us(S.sqlExtendTx!)} | store.tx(extendLease) |`,
    `| · · **SQLite: the same, 50 arriving together (group commit, the server's path)** | **${us(S.sqlExtend50!)}** | 50 × SqliteStore.tx(extendLease) at once, per renewal |`,
    `| · · SQLite, new address only: read current lease | ${us(S.sqlRead!)} | store.leasesOf |`,
    `| · · SQLite, new address only: upsert + commit | ${us(S.sqlUpsertTx!)} | store.tx(upsertLease) |`,
    `| · · SQLite, new address only: upsert + commit, 1,000 clients, 1 / 50 per transaction | ${us(S.sqlUpsertMany1!)} / ${us(S.sqlUpsertMany50!)} | store.tx(upsertLease), per renewal |`,
    `| · · whole lease write + index, one at a time (no group commit) | ${us(S.renew!)} | LeaseBook.renew |`,
    `| · · live index update (in place: a renewal moves expires_at) | ${us(S.indexPut!)} | LiveIndex.put |`,
    `| · · answer: JSON.stringify + toISOString + Response | ${us(S.answer!)} | as json(200, …) |`,
    `| · · metrics | ${us(S.metrics!)} | Metrics.event |`,
    `| · · sum of the stages above | ${us(stagesSum)} | believe + auth + body + limiter + rules + group-committed renewal + index + answer + metrics |`,
    `| · service.renew alone (rules + lease write + metrics) | ${us(S.service!)} | LeaseService.renew |`,
    "",
    `Hot functions of the server run from source under the same load (\`bun --cpu-prof --cpu-prof-md src/cli.ts server\`, ${hot.samples}, ${hot.requests.toLocaleString("en-US")} requests; self time, top 15; \`[native code]\` rows are Bun/JSC built-ins: \`run\`/\`all\`/\`get\` are bun:sqlite statement calls):`,
    "",
    "| Self% | Self | Total% | Total | Function | Location |",
    "|------:|-----:|-------:|------:|----------|----------|",
    ...hot.rows,
    "",
    "### Where one policy answer's time goes (µs)",
    "",
    "| part | µs | how measured |",
    "|---|---|---|",
    `| feed + handler + answer, in-process | ${us(P.whole!)} | what PolicyLookup's data callback runs per request (${reqBytes.byteLength} bytes, 29 attributes) |`,
    `| · RequestReader.feed (frame on bytes, decode once, check the lines) | ${us(P.feed!)} | src/server/policy/protocol.ts |`,
    `| · · of which TextDecoder.decode of the request | ${us(P.decode!)} | a fresh decoder per call |`,
    `| · policyHandler (parseIp + LiveIndex.covers) | ${us(P.handler!)} | src/server/lookups/policy.ts |`,
    `| · · parseIp | ${us(P.parseIp!)} | src/lib/ip.ts |`,
    `| · · LiveIndex.covers (${o.leases.toLocaleString("en-US")} leases) | ${us(P.covers!)} | src/server/live.ts |`,
    `| · answer() | ${us(P.answer!)} | bytes encoded once per action |`,
    `| prototype: decode + one split + Map of 29 | ${us(P.protoSplit!)} | bench-only, in bench/profile.ts |`,
    `| prototype: decode + indexOf of the 2 attributes the handler reads | ${us(P.protoScan!)} | bench-only, in bench/profile.ts (no per-line validation) |`,
    "",
  ];
  return {
    rows: [],
    sections: table,
    details: [
      `profile: server CPU per request from /proc over wrk -t1 -c50 -d${o.seconds}s (bench/renew.lua), 2 rounds each of bare plain HTTP, bare TLS, bare TLS reading the body two ways (bench/bare-server.ts flags), relayctl with 1 lease and relayctl (${o.leases.toLocaleString("en-US")} seeded leases), medians; stage spans: each of the server's functions called ${o.n.toLocaleString("en-US")} times back to back in the bench process (policy stages ${(o.n * 4).toLocaleString("en-US")} times), µs per call, median of ${o.reps} repetitions after one warm-up repetition, over a state.db seeded like the throughput figure's in the same scratch file system.`,
    ],
  };
}
