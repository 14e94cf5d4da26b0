import type { BackupUploader } from '../../publish/backups.ts';
import type { Handler } from '../router.ts';

/**
 * `GET /status/backups`: the backup buckets' queue (docs/CACHES.md, "Backup
 * buckets"): per bucket the backups done and pending, those that have failed,
 * this run's totals, and the failing backups with their last error and next
 * attempt. `{"targets": []}` when no `[[s3Backup]]` is configured.
 */
export function backupsHandler(uploader: () => BackupUploader | null): Handler {
  return async () => (await uploader()?.status()) ?? { targets: [], failing: [] };
}
