import { HydrantError } from './hydrant-error.ts';

/** A request to the HTTP API refused for a reason the client should see; `status` is the HTTP status. */
export class HttpError extends HydrantError {
  readonly code = 'HTTP_ERROR';

  constructor(
    readonly status: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
