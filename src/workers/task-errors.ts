import * as errors from '../errors/index.ts';

/**
 * Errors crossing the thread boundary. Structured clone keeps only the
 * message and stack of an Error, so a NixFormatError thrown in a worker would
 * arrive as a plain Error without its `code`. Tasks therefore return errors as
 * data, and the pool rebuilds an instance of the same Hydrant error class
 * (found by name in src/errors/index.ts), own fields included.
 */
export interface SerializedError {
  className: string;
  message: string;
  stack: string | undefined;
  /** Own enumerable fields (code, format, path, …); only structured-cloneable values. */
  fields: Record<string, unknown>;
}

export type TaskReply<T> = { ok: true; value: T } | { ok: false; error: SerializedError };

function cloneable(v: unknown): boolean {
  const t = typeof v;
  return v === null || t === 'string' || t === 'number' || t === 'boolean' || t === 'undefined' || (Array.isArray(v) && v.every((x) => typeof x === 'string'));
}

export function serializeError(e: unknown): SerializedError {
  if (!(e instanceof Error)) return { className: 'Error', message: String(e), stack: undefined, fields: {} };
  const fields: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(e)) if (cloneable(v)) fields[k] = v;
  return { className: e.constructor.name, message: e.message, stack: e.stack, fields };
}

type ErrorClass = abstract new (...args: never[]) => Error;
const HYDRANT_ERRORS = new Map<string, ErrorClass>(
  (Object.entries(errors) as [string, unknown][]).filter((entry): entry is [string, ErrorClass] => typeof entry[1] === 'function'),
);
const BUILTIN_ERRORS: Record<string, ErrorConstructor> = { TypeError, RangeError, SyntaxError };

export function deserializeError(s: SerializedError): Error {
  const cls = HYDRANT_ERRORS.get(s.className);
  let e: Error;
  if (cls) {
    e = Object.create(cls.prototype) as Error;
    Object.defineProperty(e, 'message', { value: s.message, writable: true, configurable: true });
  } else {
    e = new (BUILTIN_ERRORS[s.className] ?? Error)(s.message);
  }
  Object.assign(e, s.fields);
  if (s.stack !== undefined) Object.defineProperty(e, 'stack', { value: s.stack, writable: true, configurable: true });
  if (!cls && !(s.className in BUILTIN_ERRORS) && s.className !== 'Error') e.name = s.className;
  return e;
}
