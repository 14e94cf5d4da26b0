/** Errors of Nix formats, the store and the nix tools. */
import { errorKind, subjectErrorKind } from './hydrant-error.ts';

/** Malformed Nix data: a store path, hash, .drv, NAR, narinfo, key or nix-support file. */
export class NixFormatError extends subjectErrorKind('NIX_FORMAT', 'format') {}

/** A `nix` tool exited with an error. */
export class NixCommandError extends errorKind('NIX_COMMAND') {
  constructor(
    readonly command: readonly string[],
    readonly exitCode: number | null,
    readonly stderr: string,
  ) {
    super(`${command.join(' ')} exited with ${exitCode}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`);
  }
}

/** A filesystem path could not be serialised to a NAR: unsupported file type, or it changed while being read. */
export class NarDumpError extends errorKind('NAR_DUMP') {
  constructor(
    readonly path: string,
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`cannot dump ${JSON.stringify(path)} to a NAR: ${reason}`, options);
  }
}

/**
 * The NAR serialised from a store path does not match the hash or size the
 * store recorded for it (the path was modified, or the store's metadata is
 * wrong). Publishing it would hand out a path Nix rejects, so nothing is published.
 */
export class NarHashMismatchError extends errorKind('NAR_HASH_MISMATCH') {
  constructor(
    readonly storePath: string,
    readonly expected: { narHash: string; narSize: number },
    readonly actual: { narHash: string; narSize: number },
  ) {
    super(
      `refusing to publish ${storePath}: its NAR hashes to ${actual.narHash} (${actual.narSize} bytes) ` +
        `but the store recorded ${expected.narHash} (${expected.narSize} bytes)`,
    );
  }
}

/** A store path that should be in the local Nix store (e.g. an output to publish) is not valid there. */
export class PathNotInStoreError extends errorKind('PATH_NOT_IN_STORE') {
  constructor(readonly paths: readonly string[]) {
    super(`not valid in the local Nix store: ${paths.slice(0, 5).join(', ')}${paths.length > 5 ? `, … (${paths.length} paths)` : ''}`);
  }
}

/**
 * A transfer of store paths did not carry exactly the paths that were asked
 * for: a path nobody expected, the same path twice, or an expected path that
 * never came. Nothing from the transfer is imported.
 */
export class UnexpectedStorePathError extends errorKind('UNEXPECTED_STORE_PATH') {
  constructor(
    readonly storePath: string,
    readonly reason: 'unexpected' | 'duplicate' | 'missing',
  ) {
    const what = { unexpected: 'was not expected', duplicate: 'was sent twice', missing: 'was expected but not sent' }[reason];
    super(`refusing transfer: store path ${storePath} ${what}`);
  }
}

/**
 * A floating content-addressed output's reported path is not the one its
 * content gives (checkFloatingOutput): a builder that lies or a broken one.
 * The output is refused; nothing is imported.
 */
export class FloatingOutputMismatchError extends errorKind('CA_OUTPUT_MISMATCH') {
  constructor(
    readonly storePath: string,
    readonly expected: string,
  ) {
    super(`refusing content-addressed output ${storePath}: its content puts it at ${expected}`);
  }
}

/** A builder's private Nix store could not be set up or entered (unshare/mount failed, Nix lives under /nix, ...). */
export class PrivateStoreError extends subjectErrorKind('PRIVATE_STORE', 'dir', 'private store ') {}

/**
 * A path supplied by a build (e.g. in nix-support/hydra-build-products)
 * points outside the directory it must stay in: `..` traversal, an absolute
 * path elsewhere, or a symlink that escapes. Builds are untrusted input.
 */
export class UnsafePathError extends errorKind('UNSAFE_PATH') {
  constructor(
    readonly path: string,
    readonly reason: string,
  ) {
    super(`unsafe path '${path}': ${reason}`);
  }
}

/**
 * A derivation cannot be resolved: an output of one of its input
 * derivations has no realised path (Nix's tryResolve gives up the same way),
 * or the realised path given for it is not a store path.
 */
export class DerivationResolveError extends errorKind('DERIVATION_RESOLVE') {
  constructor(
    readonly drvPath: string,
    readonly inputDrv: string,
    readonly outputName: string,
    readonly reason: 'unrealised' | 'bad-path',
  ) {
    super(
      reason === 'unrealised'
        ? `cannot resolve ${drvPath}: output '${outputName}' of input ${inputDrv} is not realised`
        : `cannot resolve ${drvPath}: the realised path of output '${outputName}' of input ${inputDrv} is not a store path`,
    );
  }
}
