// The parts of bzip2-wasm (no types of its own) that wasm-codecs.ts uses.
declare module 'bzip2-wasm' {
  export default class BZip2 {
    init(): Promise<void>;
    /** bzip2 stream of `data`; throws when it exceeds `compressedLength`. */
    compress(data: Uint8Array, blockSize: number, compressedLength: number): Uint8Array;
  }
}
