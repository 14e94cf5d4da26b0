/**
 * NAR (Nix ARchive) support: streaming writer, strict streaming reader,
 * restore to disk, `.ls` listings and NAR hashing. See nar-format.ts for the
 * grammar.
 */
export { NAR_MAGIC, MAX_NAME_LENGTH, MAX_TARGET_LENGTH, padding } from './nar-format.ts';
export { narChunks, narReadable, narString, DEFAULT_NAR_CHUNK_SIZE } from './nar-writer.ts';
export type { NarWriteOptions } from './nar-writer.ts';
export { parseNar, NarByteReader, formatNarPath } from './nar-reader.ts';
export type { NarEvent, NarPath, NarParseOptions, ByteSource } from './nar-reader.ts';
export { restoreNar } from './nar-restore.ts';
export { narListing, narListingJson, formatNarListing } from './nar-listing.ts';
export type { NarListing, NarListingNode } from './nar-listing.ts';
export { narHash, hashStream } from './nar-hash.ts';
export type { NarHashResult } from './nar-hash.ts';
