import { defineCommand } from "citty";
import { RelayError } from "../lib/errors.ts";
import { renderHuman, type DoctorReport } from "../doctor/checks.ts";
import { runDoctor, type DoctorOptions } from "../doctor/doctor.ts";
import { printResult } from "./shared.ts";

/** `relayctl doctor`: prints the report (text or JSON) and fails with exit 1 when a check failed. */
export async function runDoctorCommand(opts: DoctorOptions & { json?: boolean }): Promise<DoctorReport> {
  const { report, exitCode } = await runDoctor(opts);
  const colour = !opts.json && process.stdout.isTTY === true && !process.env.NO_COLOR;
  printResult(opts.json, report, () => renderHuman(report, colour));
  if (exitCode !== 0) {
    const failed = report.checks.filter((c) => c.status === "fail").map((c) => c.id);
    throw new RelayError(`doctor: ${failed.length} check(s) failed: ${failed.join(", ")}`, { exitCode });
  }
  return report;
}

export const doctorCommand = defineCommand({
  meta: { name: "doctor", description: "Find setup mistakes on the mail host (Postfix, map, server) or a client, and print fixes" },
  args: {
    config: { type: "string", description: "server config (default: /etc/relayctl/server.toml)", valueHint: "PATH" },
    "client-config": { type: "string", description: "check this client config instead (add --config to check both)", valueHint: "PATH" },
    "postfix-dir": { type: "string", description: "Postfix config_directory (default: postconf -h config_directory)", valueHint: "DIR" },
    smtp: { type: "string", description: "probe relaying from this host: EHLO, MAIL, RCPT, QUIT (never DATA)", valueHint: "HOST[:PORT]" },
    json: { type: "boolean", description: "print the report as JSON" },
    verbose: { type: "boolean", description: "show stack traces on errors" },
  },
  run: ({ args }) =>
    runDoctorCommand({
      config: args.config,
      clientConfig: args["client-config"],
      postfixDir: args["postfix-dir"],
      smtp: args.smtp,
      json: args.json,
    }).then(() => undefined),
});
