// Types of packed-model-fix.mjs (plain JavaScript so the packing child process can import it).
export function dropRepeatedSubgraphInitializers(bytes: Uint8Array): { bytes: Uint8Array; dropped: number };
