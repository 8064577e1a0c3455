/**
 * The two policy responders the policy bench compares, each in its own Bun
 * process (same runtime, same process shape):
 *
 *   bun bench/policy-server.ts policy SOCKET LEASES   the real PolicyLookup + policyHandler over a LiveIndex holding LEASES live leases
 *   bun bench/policy-server.ts bare SOCKET            Bun.listen on a unix socket: reads until a blank line, always answers action=DUNNO
 *
 * Prints "ready" once listening; SIGTERM stops it. Unix sockets only.
 */
import { LiveIndex } from "../src/server/live.ts";
import { systemClock } from "../src/lib/clock.ts";
import { PolicyLookup, policyHandler } from "../src/server/lookups/policy.ts";
import { benchAddress } from "./lib.ts";

const [mode, socketPath, leasesArg] = process.argv.slice(2);
if (!socketPath || (mode !== "policy" && mode !== "bare")) throw new Error("usage: policy-server.ts policy|bare SOCKET [LEASES]");

let stop: () => Promise<void>;
if (mode === "policy") {
  const n = Number(leasesArg ?? 10_000);
  const index = new LiveIndex();
  const now = Date.now();
  const exp = now + 3_600_000;
  index.load(Array.from({ length: n }, (_, i) => ({ client: `s${String(i).padStart(6, "0")}`, family: 4, ip: benchAddress(i), granted_at: now, renewed_at: now, expires_at: exp, renewals: 0 })));
  const lookup = new PolicyLookup(socketPath, policyHandler(index, systemClock), () => index.liveCount(Date.now()));
  lookup.listen();
  stop = () => lookup.close();
} else {
  const DUNNO = "action=DUNNO\n\n";
  const listener = Bun.listen<{ pending: string }>({
    unix: socketPath,
    socket: {
      open(socket) {
        socket.data = { pending: "" };
      },
      data(socket, chunk) {
        // The least a responder can do: find each blank line, answer DUNNO.
        let buf = socket.data.pending + chunk.toString();
        let out = "";
        for (let end = buf.indexOf("\n\n"); end !== -1; end = buf.indexOf("\n\n")) {
          out += DUNNO;
          buf = buf.slice(end + 2);
        }
        socket.data.pending = buf;
        if (out) socket.write(out);
      },
    },
  });
  stop = async () => listener.stop(true);
}
console.log("ready");
process.once("SIGTERM", () => {
  void stop().finally(() => process.exit(0));
});
