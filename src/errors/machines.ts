/** Errors of build machines reached over SSH: the machines file, the connection, the serve protocol. */
import { errorKind } from './hydrant-error.ts';

/** A line of a machines file that cannot be used (the file's other lines still load). */
export class MachinesFileError extends errorKind('MACHINES_FILE') {
  constructor(
    readonly file: string,
    readonly line: number,
    readonly reason: string,
  ) {
    super(`${file}:${line}: ${reason}`);
  }
}

/** The `nix-store --serve` peer ended (or its connection did) before answering; `stderr` is its last words (ssh's error, Nix's). */
export class ServeConnectionError extends errorKind('SERVE_CONNECTION') {
  constructor(
    readonly machine: string,
    readonly stderr: string,
    options?: { cause?: unknown },
  ) {
    const said = stderr.trim().split('\n').slice(-3).join(' | ');
    super(`connection to ${machine} ended${said ? `: ${said}` : ''}`, options);
  }
}

/** The peer does not speak the serve protocol (a wrong magic number, an unsupported version, a malformed reply). */
export class ServeProtocolError extends errorKind('SERVE_PROTOCOL') {
  constructor(
    readonly machine: string,
    reason: string,
    options?: { cause?: unknown },
  ) {
    super(`nix-store --serve on ${machine}: ${reason}`, options);
  }
}

/** ssh refused the machine's host key: it does not match the machines file's column 8 (or known_hosts). */
export class SshHostKeyError extends errorKind('SSH_HOST_KEY') {
  constructor(readonly machine: string) {
    super(`host key verification failed for ${machine}: the key it presents is not the one the machines file gives`);
  }
}
