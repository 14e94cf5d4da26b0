import { parseArgs } from 'node:util';
import { HydrantError } from '../errors/index.ts';
import type { Command } from './command.ts';
import { builder } from './commands/builder.ts';
import { db } from './commands/db.ts';
import { demo } from './commands/demo.ts';
import { serve } from './commands/serve.ts';
import { status } from './commands/status.ts';
import { submit } from './commands/submit.ts';

const COMMANDS: readonly Command[] = [serve, submit, db, builder, demo, status];

function overview(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return `hydrant: a Hydra-compatible build queue runner for Nix

usage: hydrant <command> [options]
       hydrant help <command>

commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n')}
`;
}

function commandHelp(c: Command): string {
  return `usage: ${c.usage}\n\n${c.summary}\n\n${c.help}\n`;
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
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
    parsed = parseArgs({ args: rest, options: command.options, allowPositionals: true, strict: true });
  } catch (err) {
    process.stderr.write(`hydrant ${name}: ${(err as Error).message}\n`);
    return 2;
  }
  return command.run(parsed as Parameters<Command['run']>[0]);
}

// Known failures print one line with their stable code; anything else is a bug
// and keeps its stack.
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof HydrantError) process.stderr.write(`hydrant: ${err.code}: ${err.message}\n`);
    else process.stderr.write(`hydrant: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exitCode = 1;
  },
);
