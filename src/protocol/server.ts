import { readableCompressions } from './wire-compression.ts';
import {
  credentials,
  InterceptingCall,
  Metadata,
  Server,
  ServerCredentials,
  status,
  type ChannelCredentials,
  type ChannelOptions,
  type Interceptor,
  type ServerDuplexStream,
  type ServerReadableStream,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceError,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { ProtocolError } from '../errors/index.ts';
import { CLIENT_CERTIFICATE_MESSAGE, UNAUTHENTICATED_MESSAGE, type TokenAuth } from './auth.ts';
import {
  RunnerClient,
  RunnerService,
  type Ack,
  type BuilderMessage,
  type CompleteRequest,
  type FetchNarRequest,
  type FetchRequisitesRequest,
  type FetchRequisitesResponse,
  type HasPathRequest,
  type HasPathResponse,
  type Join,
  type LogChunk,
  type LogReceipt,
  type NarChunk,
  type OutputHeader,
  type RunnerMessage,
  type RunnerServer,
  type StepStatusUpdate,
  type UploadOutputMessage,
  type UploadReceipt,
  type PresignedUploadDone,
  type PresignedUploadGrant,
  type PresignedUploadReceipt,
  type PresignedUploadRequest,
  type PresignedUploads,
} from './gen/runner.ts';
import type { JobOwnership } from './job-ownership.ts';

/** Bumped when a change would be misread by an older peer. */
export const PROTOCOL_VERSION = 2;
export const SESSION_METADATA_KEY = 'x-hydrant-session';

/** The authenticated caller of a call other than Control. */
export interface CallContext {
  readonly machineId: string;
  readonly sessionId: string;
  readonly metadata: Metadata;
}

/** A joined builder's control stream, as the runner side sees it. */
export interface ControlSession extends CallContext {
  readonly join: Join;
  /** The builder's messages after its Join; ends when the builder closes the stream. */
  readonly messages: AsyncIterable<BuilderMessage>;
  /** Sends one message, waiting while the stream's buffer is full. */
  send(message: RunnerMessage): Promise<void>;
  /** Ends the stream with an error status (e.g. ping timeout). */
  fail(code: status, message: string): void;
  readonly signal: AbortSignal;
}

/**
 * What the runner does for each call. The server checks the token, the
 * session and job ownership before any of these run; a thrown ProtocolError
 * becomes its status, anything else INTERNAL.
 */
export interface RunnerHandlers {
  /** Resolves when the runner is done with the session (usually when `messages` ends). */
  control(session: ControlSession): Promise<void>;
  fetchRequisites(ctx: CallContext, req: FetchRequisitesRequest): Promise<FetchRequisitesResponse>;
  fetchNar(ctx: CallContext, req: FetchNarRequest, signal: AbortSignal): AsyncIterable<NarChunk>;
  hasPath(ctx: CallContext, req: HasPathRequest): Promise<HasPathResponse>;
  stepStatus(ctx: CallContext, req: StepStatusUpdate): Promise<Ack>;
  /** `chunks` starts with the chunk that named the job. */
  streamLog(ctx: CallContext, jobId: string, chunks: AsyncIterable<LogChunk>): Promise<LogReceipt>;
  /** `data` yields the NAR chunks after the header, pulled on demand (backpressure). */
  uploadOutput(ctx: CallContext, header: OutputHeader, data: AsyncIterable<Uint8Array>): Promise<UploadReceipt>;
  /** The job is released from its machine once this resolves. */
  complete(ctx: CallContext, req: CompleteRequest): Promise<Ack>;
  /** Builder-direct uploads to an S3 cache; without them the calls are refused (FAILED_PRECONDITION). */
  requestPresignedUpload?(ctx: CallContext, req: PresignedUploadRequest): Promise<PresignedUploadGrant>;
  completePresignedUpload?(ctx: CallContext, req: PresignedUploadDone): Promise<PresignedUploadReceipt>;
  /** What Joined announces of builder-direct uploads (undefined: off). */
  presignedUploads?(): PresignedUploads | undefined;
}

export interface RunnerServerOptions {
  readonly auth: TokenAuth;
  readonly ownership: JobOwnership;
  readonly handlers: RunnerHandlers;
  /** How often builders ping (default: a third of the ping timeout, at most 10 s). */
  readonly pingIntervalMs?: number;
  /** A builder silent for this long is dropped (default 60 s). */
  readonly pingTimeoutMs?: number;
  /** Called with unexpected handler errors (never with tokens or metadata). */
  readonly onError?: (err: unknown, method: string) => void;
  /**
   * Mutual TLS: refuse every call whose connection did not present a client
   * certificate the server's client CA signed (see `serverCredentials`).
   */
  readonly requireClientCertificate?: boolean;
  /** Called for each refused authentication (bad certificate or token); never given the token. */
  readonly onRejected?: (peer: string, reason: string, method: string) => void;
  readonly channelOptions?: ChannelOptions;
}

function channelOptions(keepaliveMs: number, keepaliveTimeoutMs: number): ChannelOptions {
  return Object.freeze({
    'grpc.keepalive_time_ms': keepaliveMs,
    'grpc.keepalive_timeout_ms': keepaliveTimeoutMs,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.max_receive_message_length': 8 * 1024 * 1024,
    'grpc.max_send_message_length': 8 * 1024 * 1024,
  });
}

// The server pings more often than a client may, so neither side refuses the other's pings.
export const SERVER_CHANNEL_OPTIONS = channelOptions(30_000, 10_000);
export const CLIENT_CHANNEL_OPTIONS = channelOptions(60_000, 20_000);

function toStatus(err: unknown, method: string, onError?: (err: unknown, method: string) => void): Partial<ServiceError> {
  if (err instanceof ProtocolError) return { code: err.grpcStatus, details: err.message };
  onError?.(err, method);
  return { code: status.INTERNAL, details: `${method} failed` };
}

/** The next value of `it`, or undefined when it has ended. */
async function first<T>(it: AsyncIterator<T>): Promise<T | undefined> {
  const r = await it.next();
  return r.done ? undefined : r.value;
}

/**
 * Reads a call's messages on demand. A Readable's default async iterator
 * destroys the stream when it ends, which would tear down the call before its
 * status is sent; this one leaves that to grpc-js.
 */
function readAll<T>(call: ServerReadableStream<T, unknown> | ServerDuplexStream<T, unknown>): AsyncIterator<T> {
  return (call.iterator({ destroyOnReturn: false }) as AsyncIterable<T>)[Symbol.asyncIterator]();
}

/** Continues an iterator already started. */
async function* rest<T>(it: AsyncIterator<T>): AsyncGenerator<T> {
  for (;;) {
    const r = await it.next();
    if (r.done) return;
    yield r.value;
  }
}

function writeAsync<T>(call: ServerWritableStream<unknown, T> | ServerDuplexStream<unknown, T>, msg: T): Promise<void> {
  if (call.write(msg)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      call.off('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      call.off('drain', onDrain);
      reject(new ProtocolError(status.CANCELLED, 'stream closed'));
    };
    call.once('drain', onDrain);
    call.once('close', onClose);
  });
}

/** What authentication needs of a server call of any kind. */
type AuthenticatedCall = Pick<ServerUnaryCall<unknown, unknown>, 'metadata' | 'getPeer' | 'getAuthContext'>;

/** The grpc-js implementation: every handler checks the token first, then the session, then job ownership. */
export function runnerImplementation(opts: RunnerServerOptions): RunnerServer {
  const { auth, ownership, handlers, onError, onRejected } = opts;
  const pingTimeoutMs = opts.pingTimeoutMs ?? 60_000;
  // Unless told, builders ping often enough that a healthy one never hits the
  // ping timeout (three pings per timeout, at most every 10 s).
  const pingIntervalMs = opts.pingIntervalMs ?? Math.max(100, Math.min(10_000, Math.floor(pingTimeoutMs / 3)));

  /** Client certificate (under mutual TLS), then token; throws UNAUTHENTICATED and reports why. */
  function authenticate(call: AuthenticatedCall, method: string): void {
    if (opts.requireClientCertificate && call.getAuthContext().transportSecurityType !== 'ssl') {
      onRejected?.(call.getPeer(), CLIENT_CERTIFICATE_MESSAGE, method);
      throw new ProtocolError(status.UNAUTHENTICATED, CLIENT_CERTIFICATE_MESSAGE);
    }
    const refusal = auth.refusal(call.metadata);
    if (refusal !== undefined) {
      onRejected?.(call.getPeer(), refusal, method);
      throw new ProtocolError(status.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE);
    }
  }

  /** Authentication and session; throws UNAUTHENTICATED. */
  function context(call: AuthenticatedCall, method: string): CallContext {
    authenticate(call, method);
    const metadata = call.metadata;
    const values = metadata.get(SESSION_METADATA_KEY);
    const sessionId = values.length === 1 && typeof values[0] === 'string' ? values[0] : '';
    const machineId = sessionId === '' ? undefined : ownership.machineOfSession(sessionId);
    if (machineId === undefined) {
      throw new ProtocolError(status.UNAUTHENTICATED, 'unknown or expired session: join on the control stream first');
    }
    return { machineId, sessionId, metadata };
  }

  /** Ends a job with its result (Complete, or the last upload's completion); the builder no longer owns it after. */
  async function completeJob(ctx: CallContext, req: CompleteRequest): Promise<Ack> {
    const ack = await handlers.complete(ctx, req);
    ownership.release(req.jobId);
    return ack;
  }

  function unary<Req extends { jobId: string }, Res>(
    method: string,
    handler: (ctx: CallContext, req: Req) => Promise<Res>,
    after?: (ctx: CallContext, req: Req) => void,
  ) {
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
      void (async () => {
        try {
          const ctx = context(call, method);
          ownership.check(ctx.machineId, call.request.jobId);
          const res = await handler(ctx, call.request);
          after?.(ctx, call.request);
          callback(null, res);
        } catch (err) {
          callback(toStatus(err, method, onError));
        }
      })();
    };
  }

  /**
   * A builder-to-runner stream answered once: `handler` gets the call's
   * context, its first message (undefined if none came) and the messages
   * after it; what it returns, or throws, answers the call.
   */
  function clientStream<Req, Res>(method: string, handler: (ctx: CallContext, head: Req | undefined, more: AsyncGenerator<Req>) => Promise<Res>) {
    return (call: ServerReadableStream<Req, Res>, callback: sendUnaryData<Res>): void => {
      void (async () => {
        try {
          const ctx = context(call, method);
          const it = readAll<Req>(call);
          const head = await first(it);
          callback(null, await handler(ctx, head, rest(it)));
        } catch (err) {
          callback(toStatus(err, method, onError));
        }
      })();
    };
  }

  return {
    control(call: ServerDuplexStream<BuilderMessage, RunnerMessage>): void {
      const abort = new AbortController();
      call.on('cancelled', () => abort.abort());
      call.on('close', () => abort.abort());
      let sessionId: string | undefined;
      void (async () => {
        try {
          authenticate(call, 'Control');
          const it = readAll<BuilderMessage>(call);
          const msg = await first(it);
          if (msg?.kind?.$case !== 'join') {
            throw new ProtocolError(status.FAILED_PRECONDITION, 'the first control message must be a join');
          }
          const join = msg.kind.value;
          if (join.protocolVersion !== PROTOCOL_VERSION) {
            throw new ProtocolError(
              status.FAILED_PRECONDITION,
              `protocol version ${join.protocolVersion} is not supported (runner speaks ${PROTOCOL_VERSION})`,
            );
          }
          if (join.machineId === '') throw new ProtocolError(status.INVALID_ARGUMENT, 'join without a machine id');
          const sid = ownership.openSession(join.machineId);
          sessionId = sid;
          const session: ControlSession = {
            machineId: join.machineId,
            sessionId: sid,
            metadata: call.metadata,
            join,
            messages: rest(it),
            send: (m) => writeAsync(call, m),
            fail: (code, message) => {
              call.emit('error', { code, details: message });
            },
            signal: abort.signal,
          };
          await session.send({
            kind: {
              $case: 'joined',
              value: {
                machineId: join.machineId,
                sessionId: sid,
                pingIntervalMs,
                pingTimeoutMs,
                protocolVersion: PROTOCOL_VERSION,
                uploadCompressions: readableCompressions(),
                presignedUploads: handlers.presignedUploads?.(),
              },
            },
          });
          await handlers.control(session);
          if (!abort.signal.aborted) call.end();
        } catch (err) {
          if (!abort.signal.aborted) call.emit('error', toStatus(err, 'Control', onError));
        } finally {
          if (sessionId !== undefined) ownership.closeSession(sessionId);
        }
      })();
    },

    fetchRequisites: unary('FetchRequisites', (ctx, req) => handlers.fetchRequisites(ctx, req)),
    hasPath: unary('HasPath', (ctx, req) => handlers.hasPath(ctx, req)),
    stepStatus: unary('StepStatus', (ctx, req) => handlers.stepStatus(ctx, req)),
    complete: unary('Complete', completeJob),
    requestPresignedUpload: unary('RequestPresignedUpload', (ctx, req: PresignedUploadRequest) => {
      if (!handlers.requestPresignedUpload) throw new ProtocolError(status.FAILED_PRECONDITION, 'this runner takes no builder-direct uploads');
      return handlers.requestPresignedUpload(ctx, req);
    }),
    completePresignedUpload: unary('CompletePresignedUpload', (ctx, req: PresignedUploadDone) => {
      if (!handlers.completePresignedUpload) throw new ProtocolError(status.FAILED_PRECONDITION, 'this runner takes no builder-direct uploads');
      return handlers.completePresignedUpload(ctx, req);
    }),

    fetchNar(call: ServerWritableStream<FetchNarRequest, NarChunk>): void {
      const abort = new AbortController();
      call.on('cancelled', () => abort.abort());
      void (async () => {
        try {
          const ctx = context(call, 'FetchNar');
          ownership.check(ctx.machineId, call.request.jobId);
          for await (const chunk of handlers.fetchNar(ctx, call.request, abort.signal)) {
            if (abort.signal.aborted) return;
            await writeAsync(call, chunk);
          }
          call.end();
        } catch (err) {
          if (!abort.signal.aborted) call.emit('error', toStatus(err, 'FetchNar', onError));
        }
      })();
    },

    streamLog: clientStream<LogChunk, LogReceipt>('StreamLog', async (ctx, head, more) => {
      if (head === undefined) throw new ProtocolError(status.INVALID_ARGUMENT, 'empty log stream');
      const jobId = head.jobId;
      ownership.check(ctx.machineId, jobId);
      async function* chunks(): AsyncGenerator<LogChunk> {
        yield head as LogChunk;
        for await (const c of more) {
          if (c.jobId !== '' && c.jobId !== jobId) {
            throw new ProtocolError(status.INVALID_ARGUMENT, 'a log stream carries one job');
          }
          yield c;
        }
      }
      return handlers.streamLog(ctx, jobId, chunks());
    }),

    uploadOutput: clientStream<UploadOutputMessage, UploadReceipt>('UploadOutput', async (ctx, head, more) => {
      if (head?.part?.$case !== 'header') {
        throw new ProtocolError(status.INVALID_ARGUMENT, 'an upload starts with its header');
      }
      const header = head.part.value;
      ownership.check(ctx.machineId, header.jobId);
      let completion: CompleteRequest | undefined;
      async function* data(): AsyncGenerator<Uint8Array> {
        for await (const m of more) {
          // Refused as it arrives, so that nothing of a wrong upload is imported.
          if (completion) throw new ProtocolError(status.INVALID_ARGUMENT, 'the completion ends an upload');
          if (m.part?.$case === 'complete') {
            if (m.part.value.jobId !== header.jobId) throw new ProtocolError(status.INVALID_ARGUMENT, 'an upload completes its own job only');
            completion = m.part.value;
          } else if (m.part?.$case !== 'data') throw new ProtocolError(status.INVALID_ARGUMENT, 'one header per upload');
          else yield m.part.value;
        }
      }
      const receipt = await handlers.uploadOutput(ctx, header, data());
      if (completion) await completeJob(ctx, completion);
      return receipt;
    }),
  };
}

/** A grpc-js Server with the Runner service; call `listen` to bind it. */
export function createRunnerServer(opts: RunnerServerOptions): Server {
  const server = new Server({ ...SERVER_CHANNEL_OPTIONS, ...opts.channelOptions });
  server.addService(RunnerService, runnerImplementation(opts));
  return server;
}

/** Binds `server` with `creds` (see ./tls.ts); resolves to the port. */
export function listen(server: Server, address: string, creds: ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
}

/** Binds `server` without TLS (loopback, or a trusted network with `grpcInsecure`); resolves to the port. */
export function listenInsecure(server: Server, address: string): Promise<number> {
  return listen(server, address, ServerCredentials.createInsecure());
}

export interface BuilderClient {
  readonly client: RunnerClient;
  /** Sets the session id sent on every call but Control (from `Joined`). */
  setSession(sessionId: string | undefined): void;
  close(): void;
}

/**
 * A builder's client. The token travels as `authorization` metadata on every
 * call (an interceptor, since grpc-js refuses call credentials on an insecure
 * channel), together with the session id once set. Without `creds` the
 * channel is plain (see ./tls.ts for TLS).
 */
export function createBuilderClient(address: string, token: string, channelOptions?: ChannelOptions, creds?: ChannelCredentials): BuilderClient {
  let session: string | undefined;
  const interceptor: Interceptor = (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${token}`);
        if (session !== undefined) metadata.set(SESSION_METADATA_KEY, session);
        next(metadata, listener);
      },
    });
  const client = new RunnerClient(address, creds ?? credentials.createInsecure(), {
    ...CLIENT_CHANNEL_OPTIONS,
    ...channelOptions,
    interceptors: [interceptor],
  });
  return {
    client,
    setSession(id) {
      session = id;
    },
    close: () => client.close(),
  };
}
