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

/**
 * The base of one failure kind: `export class XError extends errorKind('X') {}`.
 * Its errors carry `code` (also on the class, for tables of kinds); a kind
 * that holds more than a message adds its own constructor.
 */
export function errorKind<const C extends string>(code: C) {
  abstract class Kind extends HydrantError {
    static readonly code: C = code;
    readonly code: C = code;
  }
  return Kind;
}


/**
 * The base of a failure kind whose message names what failed first:
 * `new XError(subject, message, { cause })` reads `<prefix><subject>: <message>`
 * and keeps `subject` on the error as `field` (its format, method, directory, …).
 */
export function subjectErrorKind<const C extends string, const F extends string>(code: C, field: F, prefix = '') {
  abstract class SubjectKind extends errorKind(code) {
    constructor(subject: string, message: string, options?: { cause?: unknown }) {
      super(`${prefix}${subject}: ${message}`, options);
      (this as unknown as Record<string, string>)[field] = subject;
    }
  }
  return SubjectKind as unknown as { readonly code: C } & (abstract new (
    subject: string,
    message: string,
    options?: { cause?: unknown },
  ) => SubjectKind & { readonly [K in F]: string });
}
