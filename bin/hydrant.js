#!/usr/bin/env -S node --heap-growing-percent=200
// Entry point. Runs src/ compiled to JavaScript in dist/ (bin/compiled.mjs:
// made on the first start after any change to src/), or, when no build can be
// made, the TypeScript sources through tsx.
import { compiledMain, keepAlive, KEEP_ALIVE_MS } from './compiled.mjs';

const build = await compiledMain();
if (build) {
  // Stack traces name src/*.ts lines, as under tsx (the builds' .js.map files point there).
  process.setSourceMapsEnabled(true);
  // A running process keeps its build from being removed when a later one is made.
  setInterval(() => keepAlive(build.dir), KEEP_ALIVE_MS).unref();
  await import(build.main);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/cli/main.ts');
}
