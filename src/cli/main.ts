import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { ConfigError, HydrantError } from '../errors/index.ts';
import { LOG_OPTIONS, LOG_OPTIONS_HELP, type Command, type CommandArgs } from './command.ts';
import { COMMANDS } from './commands.ts';

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function overview(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return `hydrant: a Hydra-compatible build queue runner for Nix

usage: hydrant <command> [options]
       hydrant help <command>
       hydrant --version

commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n')}

every command also takes:${LOG_OPTIONS_HELP}
`;
}

function commandHelp(c: Command): string {
  return `usage: ${c.usage}\n\n${c.summary}\n\n${c.help}\n${LOG_OPTIONS_HELP}\n`;
}

/**
 * --log-format and --log-level are every command's: checked here and handed
 * on through the environment, so the command's loggers and any child process
 * (the demo's builders) use them.
 */
function applyLogOptions(values: Record<string, unknown>): void {
  const format = values['log-format'] as string | undefined;
  if (format !== undefined) {
    if (format !== 'json' && format !== 'pretty') throw new ConfigError(`--log-format: '${format}' is not json or pretty`);
    process.env.HYDRANT_LOG_FORMAT = format;
  }
  const level = values['log-level'] as string | undefined;
  if (level !== undefined) {
    if (!LOG_LEVELS.includes(level)) throw new ConfigError(`--log-level: '${level}' is not one of ${LOG_LEVELS.join(', ')}`);
    process.env.HYDRANT_LOG_LEVEL = level;
  }
  const envLevel = process.env.HYDRANT_LOG_LEVEL;
  if (envLevel !== undefined && envLevel !== '' && !LOG_LEVELS.includes(envLevel)) {
    throw new ConfigError(`HYDRANT_LOG_LEVEL: '${envLevel}' is not one of ${LOG_LEVELS.join(', ')}`);
  }
  const envFormat = process.env.HYDRANT_LOG_FORMAT;
  if (envFormat !== undefined && envFormat !== '' && envFormat !== 'json' && envFormat !== 'pretty') {
    throw new ConfigError(`HYDRANT_LOG_FORMAT: '${envFormat}' is not json or pretty`);
  }
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === '--version' || name === '-V' || name === 'version') {
    process.stdout.write(`hydrant ${version()}\n`);
    return 0;
  }
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    const target = name === 'help' ? COMMANDS.find((c) => c.name === rest[0]) : undefined;
    process.stdout.write(target ? commandHelp(target) : overview());
    return 0;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    process.stderr.write(`hydrant: unknown command '${name}'\n\n${overview()}`);
    return 2;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(commandHelp(command));
    return 0;
  }
  let parsed;
  try {
    parsed = parseArgs({ args: rest, options: { ...LOG_OPTIONS, ...command.options }, allowPositionals: true, strict: true });
  } catch (err) {
    // Node's text for an unknown option is three sentences about positionals; one clause is enough.
    const unknown = /^Unknown option '([^']+)'/.exec((err as Error).message)?.[1];
    const what = unknown ? `unknown option ${unknown}` : (err as Error).message;
    process.stderr.write(`hydrant ${name}: ${what} (see hydrant help ${name})\n`);
    return 2;
  }
  applyLogOptions(parsed.values);
  // Only now is the command's code imported (src/cli/commands.ts).
  const { run } = await command.load();
  return run(parsed as CommandArgs);
}

function debugging(): boolean {
  const level = process.env.HYDRANT_LOG_LEVEL;
  return level === 'debug' || level === 'trace';
}

// Known failures print one line with their stable code (at debug level, with
// the stack of what caused them); anything else is a bug and keeps its stack.
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof HydrantError) {
      process.stderr.write(`hydrant: ${err.code}: ${err.message}\n`);
      if (debugging()) process.stderr.write(`${err.stack ?? ''}\n${err.cause instanceof Error ? `caused by: ${err.cause.stack ?? err.cause.message}\n` : ''}`);
    } else process.stderr.write(`hydrant: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
