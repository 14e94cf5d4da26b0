/**
 * Base of every error Hydrant raises on purpose. Each failure kind is its own
 * subclass with a stable `code`, so callers, logs and tests match on the code
 * rather than on message text.
 */
export abstract class HydrantError extends Error {
  abstract readonly code: string;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}
