import { randomBytes } from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { ProtocolError } from '../errors/index.ts';

/**
 * Who may speak for which job. A builder's control stream opens a session
 * (an unguessable id bound to its machine id); every other call presents
 * that session id, and a call naming a job is allowed only if the job was
 * ordered to that session's machine and has not been released.
 *
 * Jobs belong to the machine, not the session, so a builder that reconnects
 * under the same machine id keeps its running jobs. A newer session for a
 * machine replaces the older one.
 */
export class JobOwnership {
  readonly #sessions = new Map<string, string>();
  readonly #sessionOfMachine = new Map<string, string>();
  readonly #owners = new Map<string, string>();

  openSession(machineId: string): string {
    const previous = this.#sessionOfMachine.get(machineId);
    if (previous !== undefined) this.#sessions.delete(previous);
    const sessionId = randomBytes(18).toString('base64url');
    this.#sessions.set(sessionId, machineId);
    this.#sessionOfMachine.set(machineId, sessionId);
    return sessionId;
  }

  /** Ends a session; a no-op if a newer one already replaced it. */
  closeSession(sessionId: string): void {
    const machineId = this.#sessions.get(sessionId);
    if (machineId === undefined) return;
    this.#sessions.delete(sessionId);
    if (this.#sessionOfMachine.get(machineId) === sessionId) this.#sessionOfMachine.delete(machineId);
  }

  isCurrent(sessionId: string): boolean {
    return this.#sessions.has(sessionId);
  }

  machineOfSession(sessionId: string): string | undefined {
    return this.#sessions.get(sessionId);
  }

  /** Records that `jobId` was ordered to `machineId`. A job has one owner. */
  assign(jobId: string, machineId: string): void {
    const owner = this.#owners.get(jobId);
    if (owner !== undefined && owner !== machineId) {
      throw new ProtocolError(status.FAILED_PRECONDITION, `job ${jobId} already belongs to another machine`);
    }
    this.#owners.set(jobId, machineId);
  }

  /** The job ended (completed, aborted, or its machine was given up on). */
  release(jobId: string): void {
    this.#owners.delete(jobId);
  }

  ownerOf(jobId: string): string | undefined {
    return this.#owners.get(jobId);
  }

  jobsOf(machineId: string): string[] {
    const out: string[] = [];
    for (const [job, owner] of this.#owners) if (owner === machineId) out.push(job);
    return out;
  }

  /** Throws PERMISSION_DENIED unless `machineId` owns `jobId`. Unknown jobs are refused alike. */
  check(machineId: string, jobId: string): void {
    if (jobId === '' || this.#owners.get(jobId) !== machineId) {
      throw new ProtocolError(status.PERMISSION_DENIED, `job ${jobId || '(none)'} is not assigned to this machine`);
    }
  }
}
