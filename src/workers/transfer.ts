/**
 * Moving bytes between threads without copying them.
 *
 * Transferring an ArrayBuffer detaches it in the sender, so only a buffer the
 * view owns entirely may go: a Node Buffer is often a slice of a shared 8 KiB
 * pool (or of a larger buffer), and transferring that would destroy unrelated
 * data. Such views are copied once into a buffer of their own, which is then
 * transferred.
 */
export function ownedBytes(view: Uint8Array): Uint8Array {
  const ab = view.buffer;
  if (ab instanceof ArrayBuffer && view.byteOffset === 0 && view.byteLength === ab.byteLength) return view;
  return new Uint8Array(view);
}

/** The bytes to send and the transfer list for them. */
export function forTransfer(view: Uint8Array): { bytes: Uint8Array; transferList: ArrayBuffer[] } {
  const bytes = ownedBytes(view);
  return { bytes, transferList: [bytes.buffer as ArrayBuffer] };
}

/** A Buffer view of bytes that arrived from another thread (structured clone turns Buffers into plain Uint8Arrays). */
export function asBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}
