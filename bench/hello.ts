/** Bench-only: an empty compiled Bun program, the start-up floor of any single-file Bun executable. */
process.exit(0);
