// Replaced by the database harness: starts one PostgreSQL for the whole run.
export default async function setup(): Promise<void> {}
