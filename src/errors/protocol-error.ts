import { HydrantError } from './hydrant-error.ts';

/**
 * A builder-protocol call refused or failed for a reason the caller should
 * see; `grpcStatus` is the gRPC status code (a `status` value of grpc-js).
 */
export class ProtocolError extends HydrantError {
  readonly code = 'PROTOCOL_ERROR';

  constructor(
    readonly grpcStatus: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
