export { FileBinaryCache, realisationJson } from './file-cache.ts';
export type { FileBinaryCacheOptions, PathUpload } from './file-cache.ts';
export { uploadClosure } from './upload.ts';
export type { ClosureUpload, UploadClosureOptions } from './upload.ts';
export { CACHE_COMPRESSIONS, formatStoreUri, parseStoreUri } from './store-uri.ts';
export type { CacheCompression, FileStoreUri, ParseStoreUriOptions, S3StoreUri, StoreUri } from './store-uri.ts';
export { queryPathInfos, queryRealisations } from './local-path-info.ts';
export type { LocalPathInfo, Realisation } from './local-path-info.ts';
export * as cacheLayout from './layout.ts';
