/** Errors of the builder protocol and the HTTP API. */
import { errorKind } from './hydrant-error.ts';

/**
 * A builder-protocol call refused or failed for a reason the caller should
 * see; `grpcStatus` is the gRPC status code (a `status` value of grpc-js).
 */
export class ProtocolError extends errorKind('PROTOCOL_ERROR') {
  constructor(
    readonly grpcStatus: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * A builder job ended in a failure that is reported to the runner as a
 * result state (`resultState` is a `ResultState` value of the protocol).
 */
export class BuilderJobError extends errorKind('BUILDER_JOB') {
  constructor(
    readonly resultState: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The runner refused a builder's credentials (token or client certificate) at join; retrying cannot help. */
export class BuilderUnauthenticatedError extends errorKind('BUILDER_UNAUTHENTICATED') {}

/** A builder refused the runner's TLS certificate (untrusted CA, expired, wrong host) or the runner spoke no TLS. */
export class RunnerCertificateError extends errorKind('RUNNER_CERTIFICATE_REFUSED') {}

/** A request to the HTTP API refused for a reason the client should see; `status` is the HTTP status. */
export class HttpError extends errorKind('HTTP_ERROR') {
  constructor(
    readonly status: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
