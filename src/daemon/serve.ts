import { loadRunnerConfig, redactUrl, type RunnerConfig } from '../config/runner-config.ts';
import { openDatabase, type Database } from '../db/connect.ts';
import { NotificationListener } from '../db/listener.ts';
import { ensureSchema } from '../db/schema.ts';
import { HYDRA_CHANNELS } from '../db/channels.ts';
import type { Logger } from '../util/logger.ts';
import { Lifecycle } from './lifecycle.ts';

export interface ServeOptions {
  configPath?: string;
  overrides?: Record<string, unknown>;
  log: Logger;
  /** Install SIGTERM/SIGINT/SIGHUP handlers (off in tests). */
  handleSignals?: boolean;
}

/**
 * The runner daemon's shell: configuration, database, schema check, the
 * LISTEN connection, and the lifecycle with graceful shutdown on SIGTERM and
 * configuration reload on SIGHUP. The scheduler's actors attach here.
 */
export class RunnerDaemon {
  readonly lifecycle = new Lifecycle();
  private db: Database | null = null;
  private listener: NotificationListener | null = null;
  private signalHandlers: [NodeJS.Signals, () => void][] = [];
  config: RunnerConfig;

  constructor(private readonly options: ServeOptions) {
    this.config = loadRunnerConfig(options.configPath, options.overrides);
  }

  get database(): Database {
    if (!this.db) throw new Error('database not open');
    return this.db;
  }

  async start(): Promise<void> {
    const { log } = this.options;
    log.info({ state: 'starting' }, 'runner starting');
    this.db = await openDatabase(this.config);
    log.info({ db: redactUrl(this.db.url), embedded: this.db.embedded }, 'database connected');
    const schema = await ensureSchema(this.db.pool);
    log.info({ created: schema.created, version: schema.version }, schema.created ? 'created Hydra schema' : 'Hydra schema accepted');
    this.listener = new NotificationListener({ url: this.db.url, channels: HYDRA_CHANNELS });
    this.listener.on('notification', (n) => log.debug({ channel: n.channel, payload: n.payload }, 'notification'));
    this.listener.on('disconnected', (e: Error) => log.warn({ err: e.message }, 'LISTEN connection lost; reconnecting'));
    await this.listener.start();
    if (this.options.handleSignals) this.installSignals();
    this.lifecycle.to('running');
    log.info({ state: 'running' }, 'runner running');
  }

  /** Re-reads the configuration; an invalid file keeps the old one. */
  reload(): void {
    const { log } = this.options;
    try {
      this.config = loadRunnerConfig(this.options.configPath, this.options.overrides);
      log.info('configuration reloaded');
    } catch (err) {
      log.error({ err: (err as Error).message }, 'configuration reload failed; keeping the previous one');
    }
  }

  async stop(): Promise<void> {
    if (this.lifecycle.state === 'stopped' || this.lifecycle.state === 'draining') return this.lifecycle.when('stopped');
    const { log } = this.options;
    if (this.lifecycle.state === 'running') this.lifecycle.to('draining');
    log.info({ state: this.lifecycle.state }, 'runner draining');
    for (const [sig, fn] of this.signalHandlers) process.off(sig, fn);
    await this.listener?.stop();
    await this.db?.close();
    this.lifecycle.to('stopped');
    log.info({ state: 'stopped' }, 'runner stopped');
  }

  private installSignals(): void {
    const stop = () => void this.stop();
    const hup = () => this.reload();
    this.signalHandlers = [['SIGTERM', stop], ['SIGINT', stop], ['SIGHUP', hup]];
    for (const [sig, fn] of this.signalHandlers) process.on(sig, fn);
  }
}
