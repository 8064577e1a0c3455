import { existsSync, statSync } from "node:fs";
import { ExitCode, usageError, type ExitCodeValue } from "../lib/errors.ts";
import { buildReport, collect, type CheckResult, type DoctorReport } from "./checks.ts";
import { clientChecks } from "./client.ts";
import { serverChecks } from "./server.ts";
import { parseSmtpTarget, smtpCheck } from "./smtp.ts";

/** What `relayctl doctor` was asked to check. */
export interface DoctorOptions {
  config?: string;
  clientConfig?: string;
  postfixDir?: string;
  smtp?: string;
}

/**
 * Runs the checks and returns the report with its exit code: 0 when nothing failed,
 * 1 when a check failed. Bad flags throw a usage error (exit 2) before anything runs.
 */
export async function runDoctor(o: DoctorOptions): Promise<{ report: DoctorReport; exitCode: ExitCodeValue }> {
  if (o.postfixDir !== undefined && !(existsSync(o.postfixDir) && statSync(o.postfixDir).isDirectory())) {
    throw usageError(`--postfix-dir ${o.postfixDir}: not a directory`, "pass Postfix's config_directory, e.g. /etc/postfix");
  }
  const target = o.smtp === undefined ? undefined : parseSmtpTarget(o.smtp);
  // Client checks alone when only a client config is named; the mail host's otherwise.
  const server = o.config !== undefined || o.clientConfig === undefined;
  const checks: CheckResult[] = [];
  if (server) checks.push(...(await collect("server.internal", () => serverChecks({ configPath: o.config, postfixDir: o.postfixDir }))));
  if (o.clientConfig !== undefined) checks.push(...(await collect("client.internal", () => clientChecks({ configPath: o.clientConfig }))));
  if (target) checks.push(...(await collect("client.smtp", async () => [await smtpCheck(target)])));
  const report = buildReport(checks);
  return { report, exitCode: report.ok ? ExitCode.OK : ExitCode.FAILED };
}
