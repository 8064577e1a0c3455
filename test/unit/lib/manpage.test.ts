import { describe, expect, test } from "bun:test";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { main } from "../../../src/cli.ts";
import { commandTree } from "../../../src/lib/cmdtree.ts";
import { renderManPage, roff } from "../../../src/lib/manpage.ts";
import { tempDir } from "../helpers.ts";

const page = renderManPage(await commandTree(main), { version: "1.2.3", date: new Date(Date.UTC(2026, 0, 2)) });

describe("man page", () => {
  test("has the sections a man page needs, dated and versioned as asked", () => {
    expect(page).toStartWith('.TH RELAYCTL 1 "2026-01-02" "relayctl 1.2.3" "User Commands"\n.nh\n.ad l\n.SH NAME\nrelayctl \\- let hosts');
    for (const s of ["SYNOPSIS", "DESCRIPTION", "COMMANDS", '"EXIT STATUS"', "FILES", "ENVIRONMENT", '"SEE ALSO"']) expect(page).toContain(`\n.SH ${s}\n`);
    for (const code of [0, 1, 2, 3]) expect(page).toContain(`.TP\n\\fB${code}\\fR\n`);
    expect(page).toContain("\\fBNO_COLOR\\fR");
  });

  test("escapes what roff would misread", () => {
    expect(roff(".starts with a dot\n'and a quote")).toBe("\\&.starts with a dot\n\\&'and a quote");
    expect(roff("a\\b --flag `relayctl client`")).toBe("a\\eb \\-\\-flag \\fBrelayctl client\\fR");
  });

  const groff = spawnSync("groff", ["--version"]).status === 0;
  test.skipIf(!groff)("groff renders it without a warning", () => {
    const file = join(tempDir("relayctl-man-"), "relayctl.1");
    writeFileSync(file, page);
    const r = spawnSync("groff", ["-man", "-Tutf8", "-ww", "-z", file], { encoding: "utf8" });
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
  });
});
