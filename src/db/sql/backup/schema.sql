-- Hydrant's own tables, in a schema of their own so that Hydra's (public)
-- schema stays exactly Hydra's. Created only when backup buckets are
-- configured; idempotent.
create schema if not exists hydrant;

-- One row per backup target (store URI and prefix): builds that finished
-- from `since` on are backed up to it (nothing older than the target itself).
create table if not exists hydrant.backup_targets (
    target text primary key not null,
    since  integer not null
);

-- The durable queue: one row per build and target, from the build's end to
-- its backup. A build finished with status 0 or 6 and no row here is found
-- again by the scan at start.
create table if not exists hydrant.backup_queue (
    target      text not null references hydrant.backup_targets(target) on delete cascade,
    build       integer not null,
    state       text not null default 'pending' check (state in ('pending', 'done')),
    queuedAt    integer not null,
    attempts    integer not null default 0,
    nextAttempt integer not null,
    lastError   text,
    doneAt      integer,
    primary key (target, build)
);

create index if not exists backup_queue_due on hydrant.backup_queue (target, nextAttempt) where state = 'pending';
