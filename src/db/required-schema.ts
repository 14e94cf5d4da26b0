/**
 * The tables and columns of Hydra's schema that Hydrant reads or writes.
 * `hydrant db check` and `hydrant serve` verify these exist before doing
 * anything; names are lower case as PostgreSQL stores them.
 */
export const REQUIRED_SCHEMA: Readonly<Record<string, readonly string[]>> = Object.freeze({
  schemaversion: ['version'],
  users: ['username', 'emailaddress', 'password'],
  projects: ['name', 'displayname', 'owner', 'enabled'],
  jobsets: ['id', 'project', 'name', 'schedulingshares', 'enabled', 'type', 'nixexprinput', 'nixexprpath', 'emailoverride'],
  builds: [
    'id', 'finished', 'timestamp', 'jobset_id', 'job', 'nixname', 'drvpath', 'system',
    'maxsilent', 'timeout', 'priority', 'globalpriority', 'starttime', 'stoptime',
    'iscachedbuild', 'buildstatus', 'size', 'closuresize', 'releasename', 'keep',
    'notificationpendingsince', 'iscurrent', 'ischannel',
  ],
  buildoutputs: ['build', 'name', 'path'],
  buildsteps: [
    'build', 'stepnr', 'type', 'drvpath', 'busy', 'status', 'errormsg', 'starttime', 'stoptime',
    'machine', 'system', 'propagatedfrom', 'overhead', 'timesbuilt', 'isnondeterministic',
    'resolveddrvpath',
  ],
  buildstepoutputs: ['build', 'stepnr', 'name', 'path'],
  buildproducts: ['build', 'productnr', 'type', 'subtype', 'filesize', 'sha256hash', 'path', 'name', 'defaultpath'],
  buildmetrics: ['build', 'name', 'unit', 'value', 'project', 'jobset', 'job', 'timestamp'],
  failedpaths: ['path'],
});

/** Hydra's schema version that the bundled migration creates. */
export const HYDRA_SCHEMA_VERSION = 87;
