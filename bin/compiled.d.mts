// Types of bin/compiled.mjs (plain JavaScript: it runs before any loader), for the tests.
export const UNUSED_MS: number;
export const KEEP_ALIVE_MS: number;
export function sourceKey(root?: string): string;
export function rewriteSpecifiers(code: string, expected: number): string;
export function compiledMain(options?: {
  root?: string;
  env?: NodeJS.ProcessEnv;
  warn?: (line: string) => void;
  now?: number;
}): Promise<{ dir: string; main: string } | null>;
export function keepAlive(dir: string): void;
