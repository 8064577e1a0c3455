// Builds the single executable dist/relayctl with the version baked in.
// Run with `npm run build` (bun from node_modules; nothing else needed).
import { spawnSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import pkg from "./package.json" with { type: "json" };

function gitCommit(): string {
  const r = spawnSync("git", ["rev-parse", "--short=12", "HEAD"], { encoding: "utf8" });
  return r.status === 0 ? r.stdout.trim() : "unknown";
}

const target = `bun-linux-${process.arch === "arm64" ? "arm64" : "x64"}`;
mkdirSync("dist", { recursive: true });
const result = await Bun.build({
  entrypoints: ["src/cli.ts"],
  minify: true,
  sourcemap: "none",
  define: {
    RELAYCTL_VERSION: JSON.stringify(pkg.version),
    RELAYCTL_COMMIT: JSON.stringify(gitCommit()),
    RELAYCTL_TARGET: JSON.stringify(`linux-${process.arch}`),
  },
  compile: {
    outfile: "dist/relayctl",
    // A binary in /usr/local/bin must not change behaviour with whatever .env
    // or bunfig.toml happens to sit in the directory cron runs it from.
    autoloadDotenv: false,
    autoloadBunfig: false,
    autoloadTsconfig: false,
    autoloadPackageJson: false,
  },
});
if (!result.success) {
  for (const m of result.logs) console.error(m);
  process.exit(1);
}
console.log(`built dist/relayctl ${pkg.version} (${target})`);
