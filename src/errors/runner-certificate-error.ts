import { HydrantError } from './hydrant-error.ts';

/** A builder refused the runner's TLS certificate (untrusted CA, expired, wrong host) or the runner spoke no TLS. */
export class RunnerCertificateError extends HydrantError {
  readonly code = 'RUNNER_CERTIFICATE_REFUSED';
}
