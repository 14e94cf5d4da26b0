import { HydrantError } from './hydrant-error.ts';

/** `hydrant demo` could not run its demo (a builder did not start or died, ...). */
export class DemoError extends HydrantError {
  readonly code = 'DEMO_FAILED';
}
