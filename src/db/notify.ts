import type pg from 'pg';
import { prepared } from './sql.ts';

/**
 * NOTIFYs the runner sends for hydra-notify and the web UI. They are
 * delivered when the caller's transaction commits, so a listener never hears
 * of a result that was rolled back.
 */

/** PostgreSQL rejects a NOTIFY payload of 8000 bytes or more. */
export const MAX_NOTIFY_PAYLOAD_BYTES = 7999;

/** NOTIFYs held back per transaction (see withTransaction), to be sent in one statement before it commits. */
const held = new WeakMap<pg.ClientBase, { channels: string[]; payloads: string[] }>();

/** From now on `client`'s NOTIFYs wait for flushNotifications. */
export function holdNotifications(client: pg.ClientBase): void {
  held.set(client, { channels: [], payloads: [] });
}

/** Sends the NOTIFYs held for `client`, in order, in one round trip; then stops holding. */
export async function flushNotifications(client: pg.ClientBase): Promise<void> {
  const h = held.get(client);
  held.delete(client);
  if (h && h.payloads.length > 0) await client.query(prepared('results/notify'), [h.channels, h.payloads]);
}

/** Forgets the NOTIFYs held for `client` (its transaction rolled back). */
export function dropNotifications(client: pg.ClientBase): void {
  held.delete(client);
}

async function notifyAll(client: pg.ClientBase, channel: string, payloads: readonly string[]): Promise<void> {
  if (payloads.length === 0) return;
  const h = held.get(client);
  if (h) {
    for (const p of payloads) {
      h.channels.push(channel);
      h.payloads.push(p);
    }
    return;
  }
  await client.query(prepared('results/notify'), [payloads.map(() => channel), payloads]);
}

export function notifyBuildStarted(client: pg.ClientBase, buildId: number): Promise<void> {
  return notifyAll(client, 'build_started', [String(buildId)]);
}

export function notifyStepStarted(client: pg.ClientBase, buildId: number, stepnr: number): Promise<void> {
  return notifyAll(client, 'step_started', [`${buildId}\t${stepnr}`]);
}

export function notifyStepFinished(client: pg.ClientBase, buildId: number, stepnr: number, logFile: string): Promise<void> {
  return notifyAll(client, 'step_finished', [`${buildId}\t${stepnr}\t${logFile}`]);
}

/**
 * `build_finished` payloads: the build that finished, then the dependent
 * builds that finished with it, tab-separated. A long list is split so each
 * payload stays under the limit, and every chunk starts with `first` so each
 * is meaningful on its own. A dependent listed twice, or equal to `first`, is
 * sent once (hydra-notify would otherwise process it twice).
 */
export function buildFinishedPayloads(first: number, dependents: readonly number[], maxBytes = MAX_NOTIFY_PAYLOAD_BYTES): string[] {
  if (!(maxBytes <= MAX_NOTIFY_PAYLOAD_BYTES)) throw new RangeError(`a NOTIFY payload must stay under 8000 bytes, not ${maxBytes}`);
  const head = String(first);
  const seen = new Set<number>([first]);
  const payloads: string[] = [];
  let current = head;
  let count = 0;
  for (const id of dependents) {
    if (seen.has(id)) continue;
    seen.add(id);
    const field = String(id);
    // Ids are ASCII digits (and '-'), so characters are bytes.
    if (count > 0 && current.length + 1 + field.length > maxBytes) {
      payloads.push(current);
      current = head;
      count = 0;
    }
    if (head.length + 1 + field.length > maxBytes) throw new RangeError(`build id ${field} cannot fit a NOTIFY payload`);
    current += `\t${field}`;
    count++;
  }
  payloads.push(current);
  return payloads;
}

/**
 * NOTIFY `build_finished` for `ids[0]` and its dependents `ids[1..]`, in as
 * many notifications as the payload limit needs. Nothing is sent for [].
 */
export async function notifyBuildsFinished(client: pg.ClientBase, ids: readonly number[]): Promise<void> {
  const [first, ...dependents] = ids;
  if (first === undefined) return;
  await notifyAll(client, 'build_finished', buildFinishedPayloads(first, dependents));
}
