/**
 * Load generator for the policy bench, run as its own Bun process so that it
 * and the responder under test each get a core:
 *
 *   bun bench/policy-load.ts SOCKET CONNS SECONDS MAX_ANSWERS LEASES check|any
 *
 * Opens CONNS reused unix-socket connections, as Postfix's smtpd keeps its
 * policy connections; each sends one request shaped like Postfix 3.7's
 * (29 attributes, protocol_state=RCPT), waits for the answer, and sends the
 * next. Half the client_address values hold a live lease (benchAddress(i),
 * i < LEASES), half do not. With `check`, every answer must be OK exactly for
 * the leased half and DUNNO otherwise. Stops after SECONDS or MAX_ANSWERS,
 * whichever comes first, and prints one BENCH_JSON line (latencies in µs).
 */
import { benchAddress } from "./lib.ts";

const [socketPath, connsArg, secondsArg, maxArg, leasesArg, checkArg] = process.argv.slice(2);
const conns = Number(connsArg);
const seconds = Number(secondsArg);
const maxAnswers = Number(maxArg);
const leases = Number(leasesArg);
const check = checkArg === "check";
if (!socketPath || !conns || !seconds || !maxAnswers || !leases) throw new Error("usage: policy-load.ts SOCKET CONNS SECONDS MAX LEASES check|any");

/** One RCPT-stage request as Postfix 3.7 sends it to check_policy_service (SMTPD_POLICY_README). */
function request(i: number, leased: boolean): string {
  const ip = leased ? benchAddress(i % leases) : benchAddress(leases + (i % leases));
  const qid = (0x4a1f2b0 + i).toString(16).toUpperCase();
  return [
    "request=smtpd_access_policy",
    "protocol_state=RCPT",
    "protocol_name=ESMTP",
    `helo_name=host-${i}.dyn.example.net`,
    `queue_id=${qid}`,
    `sender=user${i}@example.net`,
    `recipient=rcpt${i % 97}@example.org`,
    "recipient_count=0",
    `client_address=${ip}`,
    `client_name=host-${i}.dyn.example.net`,
    `reverse_client_name=host-${i}.dyn.example.net`,
    `instance=${(i % 4096).toString(16)}.6564a1b2.${i % 1000}.0`,
    "sasl_method=",
    "sasl_username=",
    "sasl_sender=",
    `size=${1000 + (i % 50000)}`,
    "ccert_subject=",
    "ccert_issuer=",
    "ccert_fingerprint=",
    "encryption_protocol=TLSv1.3",
    "encryption_cipher=TLS_AES_256_GCM_SHA384",
    "encryption_keysize=256",
    "etrn_domain=",
    "stress=",
    "ccert_pubkey_fingerprint=",
    `client_port=${40000 + (i % 20000)}`,
    "policy_context=",
    "server_address=198.51.100.25",
    "server_port=25",
    "",
    "",
  ].join("\n");
}

// Pre-encoded requests, so the generator spends its time on the socket, not on strings.
const PER_CONN = 256;
const enc = new TextEncoder();
const reqs: { bytes: Uint8Array; ok: boolean }[] = [];
for (let i = 0; i < PER_CONN * 4; i++) {
  const leased = i % 2 === 0;
  reqs.push({ bytes: enc.encode(request(i * 7 + 3, leased)), ok: leased });
}

const lat: number[] = [];
let answers = 0;
let wrong = 0;
let errors = 0;
let bytesPerRequest = 0;
for (const r of reqs) bytesPerRequest += r.bytes.byteLength;
bytesPerRequest /= reqs.length;

const t0 = performance.now();
const deadline = t0 + seconds * 1000;
let tEnd = 0;

await new Promise<void>((resolve) => {
  let open = conns;
  const finish = () => {
    if (--open === 0) {
      tEnd = performance.now();
      resolve();
    }
  };
  for (let c = 0; c < conns; c++) {
    let k = c * 13;
    let sentAt = 0;
    let pending = "";
    let current = reqs[0]!;
    const send = (s: { write(b: Uint8Array): number; end(): void }) => {
      if (answers >= maxAnswers || performance.now() >= deadline) {
        s.end();
        return;
      }
      current = reqs[k++ % reqs.length]!;
      sentAt = performance.now();
      s.write(current.bytes);
    };
    void Bun.connect<undefined>({
      unix: socketPath,
      socket: {
        open(s) {
          send(s);
        },
        data(s, chunk) {
          pending += chunk.toString();
          const end = pending.indexOf("\n\n");
          if (end === -1) return;
          const now = performance.now();
          const action = pending.slice(0, end);
          pending = pending.slice(end + 2);
          lat.push((now - sentAt) * 1000);
          answers++;
          if (check && action !== (current.ok ? "action=OK" : "action=DUNNO")) wrong++;
          else if (!check && !action.startsWith("action=")) wrong++;
          send(s);
        },
        close() {
          finish();
        },
        error() {
          errors++;
        },
        connectError() {
          errors++;
          finish();
        },
      },
    });
  }
});

lat.sort((a, b) => a - b);
const pct = (p: number) => lat[Math.min(lat.length - 1, Math.max(0, Math.ceil((p / 100) * lat.length) - 1))] ?? NaN;
console.log(
  "BENCH_JSON " +
    JSON.stringify({ answers, seconds: (tEnd - t0) / 1000, p50_us: pct(50), p99_us: pct(99), max_us: lat[lat.length - 1] ?? NaN, wrong, errors, bytes_per_request: Math.round(bytesPerRequest) }),
);
process.exit(0);
