import { EventEmitter } from 'node:events';
import pg from 'pg';

/**
 * A dedicated connection that LISTENs on Hydra's channels. A NOTIFY is only a
 * hint: when the connection drops it reconnects with capped exponential
 * backoff and emits `reconnected`, after which the owner must re-poll,
 * because notifications sent while disconnected are lost.
 *
 * Events: `notification` ({channel, payload}), `connected`, `reconnected`,
 * `disconnected` (error), `error` is never emitted (errors become reconnects).
 */
export interface Notification {
  channel: string;
  payload: string;
}

export interface ListenerOptions {
  url: string;
  channels: readonly string[];
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

type State = 'idle' | 'connecting' | 'listening' | 'waiting' | 'stopped';

export class NotificationListener extends EventEmitter {
  private client: pg.Client | null = null;
  private state: State = 'idle';
  private attempt = 0;
  private timer: NodeJS.Timeout | null = null;
  private everConnected = false;

  constructor(private readonly options: ListenerOptions) {
    super();
  }

  get status(): State {
    return this.state;
  }

  /** Resolves once the first LISTEN is in place (or keeps retrying in the background). */
  start(): Promise<void> {
    return new Promise((resolve) => {
      this.once('connected', () => resolve());
      void this.connect();
    });
  }

  private async connect(): Promise<void> {
    if (this.state === 'stopped') return;
    this.state = 'connecting';
    const client = new pg.Client({ connectionString: this.options.url, application_name: 'hydrant-listen' });
    this.client = client;
    client.on('notification', (n) => {
      this.emit('notification', { channel: n.channel, payload: n.payload ?? '' } satisfies Notification);
    });
    client.on('error', (err) => this.lost(client, err));
    client.on('end', () => this.lost(client, new Error('connection ended')));
    try {
      await client.connect();
      for (const ch of this.options.channels) await client.query(`listen ${pg.escapeIdentifier(ch)}`);
    } catch (err) {
      this.lost(client, err as Error);
      return;
    }
    if (this.client !== client || (this.state as State) === 'stopped') return;
    this.state = 'listening';
    this.attempt = 0;
    const again = this.everConnected;
    this.everConnected = true;
    this.emit('connected');
    if (again) this.emit('reconnected');
  }

  private lost(client: pg.Client, err: Error): void {
    if (this.client !== client || this.state === 'stopped' || this.state === 'waiting') return;
    this.client = null;
    client.removeAllListeners('notification');
    client.end().catch(() => {});
    this.state = 'waiting';
    this.emit('disconnected', err);
    const min = this.options.minBackoffMs ?? 100;
    const max = this.options.maxBackoffMs ?? 30_000;
    const base = Math.min(max, min * 2 ** this.attempt++);
    const delay = base / 2 + Math.random() * (base / 2);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.connect();
    }, delay);
  }

  async stop(): Promise<void> {
    this.state = 'stopped';
    if (this.timer) clearTimeout(this.timer);
    const c = this.client;
    this.client = null;
    if (c) await c.end().catch(() => {});
  }
}
