// Types of layout.js for the tests that import it in Node (the page itself runs plain JS).

export interface PackedDeps {
  start: Int32Array;
  list: Int32Array;
}

export interface PackedLayers {
  layerOf: Int32Array;
  order: Int32Array;
  sizes: Int32Array;
}

export function packDeps(deps: readonly (readonly number[])[]): PackedDeps;
export function layoutLayers(graph: PackedDeps & { names: readonly string[] }): PackedLayers;
export function unpackLayers(order: Int32Array, sizes: Int32Array): number[][];
export function layersOf(deps: readonly (readonly number[])[], names: readonly string[]): { layerOf: Int32Array; layers: number[][] };
